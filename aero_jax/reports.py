"""aero-report: the papers' table and figures for one or several runs, side by side.

    aero-report WORKDIR [WORKDIR ...] [--out DIR]

Everything comes from the runs' own files: config.json, metrics.jsonl, eval/ (head-entropy
matrices) and the newest checkpoint (thresholds, temperatures). Writes table.md, table.csv and
the PNG figures to DIR (default: the first WORKDIR's report/).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import os
import re
from typing import Dict, List, Tuple

import numpy as np

from aero_jax import figures
from aero_jax.config import ConfigError, ModelConfig
from aero_jax.entropy import entropy_range_shares
from aero_jax.errors import argparse_main
from aero_jax.evaluate import load_run_config, restore_run
from aero_jax.model import THRESHOLDS
from aero_jax.model import temperatures as model_temperatures
from aero_jax.pi.cost import pi_cost
from aero_jax.run_config import architecture_label
from aero_jax.run_log import METRICS_FILE, read_metrics
from aero_jax.workdir import make_output_folder

SIZE_FIELDS = ("num_layers", "num_heads", "d_model", "d_ff", "vocab_size", "max_len")


@dataclasses.dataclass
class Run:
    label: str
    workdir: str
    model_config: ModelConfig
    train: List[dict]
    evals: List[dict]
    head_entropy: np.ndarray  # [L, H], the newest evaluation
    params: dict


def newest_evaluation(workdir: str) -> Tuple[int, np.ndarray]:
    """(step, head entropy [L, H]) of the run's newest evaluation."""
    files = glob.glob(os.path.join(workdir, "eval", "head_entropy_step*.npy"))
    if not files:
        raise ConfigError(f"workdir {workdir} has no eval/head_entropy_step*.npy; accepted: a run evaluated by "
                          f"aero-train (with sow_entropy on)")
    step, path = max((int(re.findall(r"step(\d+)", f)[-1]), f) for f in files)
    return step, np.load(path)


def newest_head_entropy(workdir: str) -> np.ndarray:
    return newest_evaluation(workdir)[1]


def load_run(workdir: str) -> Run:
    load_run_config(workdir)  # a clear error first when this is no run directory
    if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
        raise ConfigError(f"workdir {workdir} has no {METRICS_FILE}; accepted: a run directory written by aero-train")
    records = read_metrics(workdir)
    run = restore_run(workdir)
    return Run(label=architecture_label(run.config.model), workdir=workdir, model_config=run.model.config,
               train=[r for r in records if r["kind"] == "train"], evals=[r for r in records if r["kind"] == "eval"],
               head_entropy=newest_head_entropy(workdir), params=run.state.params)


def check_same_size(runs: List[Run]) -> None:
    sizes = {r.workdir: tuple(getattr(r.model_config, f) for f in SIZE_FIELDS) for r in runs}
    if len(set(sizes.values())) > 1:
        listed = "; ".join(f"{w}: " + ", ".join(f"{f}={v}" for f, v in zip(SIZE_FIELDS, s)) for w, s in sizes.items())
        raise ConfigError(f"runs of different sizes cannot share one comparison ({listed}); accepted: runs that "
                          f"differ only in architecture")


def _unique_labels(runs: List[Run]) -> None:
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = f"{r.label} ({os.path.basename(os.path.normpath(r.workdir))})"


def table_rows(runs: List[Run]) -> List[Dict]:
    rows = []
    for r in runs:
        c = pi_cost(r.model_config, name=r.label)
        rows.append({"architecture": r.label,
                     "eval perplexity": round(r.evals[-1]["perplexity"], 3) if r.evals else None,
                     "nonlinear ops": c["nonlinear_ops"], "FFN FLOPs (B)": round(c["ffn_flops"] / 1e9, 3),
                     "attention FLOPs (B)": round(c["attn_flops"] / 1e9, 3), "comm (GB)": round(c["comm_gb"], 3),
                     "latency (min)": round(c["latency_min"], 3), "comm saving": round(c["comm_saving"], 2),
                     "latency saving": round(c["latency_saving"], 2)})
    return rows


def write_table(rows: List[Dict], out: str) -> None:
    columns = list(rows[0])
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |" for row in rows]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _series(run: Run, key: str):
    records = [rec for rec in run.train if rec.get(key) is not None]
    return [rec["step"] for rec in records], np.asarray([rec[key] for rec in records], float)


def write_figures(runs: List[Run], out: str) -> Dict[str, str]:
    """Every figure whose data the runs have; returns {name: path}."""
    by = {r.label: r for r in runs}
    written = {
        "head_entropy": figures.heatmaps({k: r.head_entropy for k, r in by.items()}, value_label="entropy (nats)",
                                         title="Attention entropy of each head (validation, newest evaluation)"),
        "entropy_ranges": figures.range_shares({k: entropy_range_shares(r.head_entropy) for k, r in by.items()},
                                               title="Share of heads per entropy range"),
        "layer_entropy": figures.per_layer_curves({k: _series(r, "layer_entropy") for k, r in by.items()},
                                                  title="Mean attention entropy of each layer during training",
                                                  value_label="entropy (nats)"),
        "nonfinite": figures.per_layer_curves({k: _series(r, "nonfinite_attention") for k, r in by.items()},
                                              title="Non-finite attention probabilities per layer",
                                              value_label="count per log window"),
    }
    thresholds = {k: r.params[THRESHOLDS] for k, r in by.items() if THRESHOLDS in r.params}
    if thresholds:
        written["thresholds"] = figures.heatmaps(thresholds, value_label="theta (fraction of log T)",
                                                 title="Learned entropy thresholds of each head")
    temperatures = {k: np.stack([np.asarray(model_temperatures(r.params[f"block_{l}"]["attn"], r.model_config))
                                 for l in range(r.model_config.num_layers)])
                    for k, r in by.items() if r.model_config.learnable_temperature}
    if temperatures:
        written["temperatures"] = figures.temperature_summary(temperatures, title="Learned attention temperatures")
    return {name: figures.save(fig, os.path.join(out, f"{name}.png")) for name, fig in written.items()}


def report(workdirs: List[str], out: str = "") -> Dict[str, str]:
    out = out or os.path.join(workdirs[0], "report")
    if os.path.isdir(workdirs[0]):  # a missing workdir is named by load_run below
        make_output_folder(out, flag="--out")
    runs = [load_run(w) for w in workdirs]
    check_same_size(runs)
    _unique_labels(runs)
    write_table(table_rows(runs), out)
    paths = write_figures(runs, out)
    return {"table.md": os.path.join(out, "table.md"), "table.csv": os.path.join(out, "table.csv"), **paths}


def main(argv=None):
    figures.files_only()
    parser = argparse.ArgumentParser(prog="aero-report", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="")
    argparse_main("aero-report", parser, lambda args: print(
        "\n".join(f"{name}: {path}" for name, path in report(args.workdirs, args.out).items())), argv,
                  interrupted=lambda: "the report's files written so far may be incomplete; rerun to write them all")


if __name__ == "__main__":
    main()
