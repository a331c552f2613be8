"""aero-report: the papers' table and figures for one or several runs, side by side.

    aero-report WORKDIR [WORKDIR ...] [--out DIR]

Everything comes from the runs' own files: config.json, metrics.jsonl, eval/ (head-entropy
matrices) and a checkpoint (thresholds, temperatures). Writes table.md, table.csv and
the PNG figures to DIR (default: the first WORKDIR's report/).

Each run is shown at one step, the table's step column: its newest kept checkpoint that has an evaluation
(a perplexity record and a head-entropy matrix), so a row's perplexity, its heatmap and its learned
thresholds and temperatures come from the same weights. A run with no evaluation at any kept checkpoint
is shown at its newest checkpoint and newest evaluation, and the step column names both.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from aero_jax import figures
from aero_jax.config import ConfigError, ModelConfig
from aero_jax.entropy import entropy_range_shares
from aero_jax.errors import argparse_main
from aero_jax.evaluate import RestoredRun, load_run_config, restore_run
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
    step: int  # of the checkpoint: `params`
    eval_step: int  # of the evaluation (`perplexity`, `head_entropy`): `step` unless no kept checkpoint has one
    perplexity: Optional[float]  # None: no perplexity record at eval_step
    head_entropy: np.ndarray  # [L, H]
    params: dict

    @property
    def step_label(self):
        """The step of the row's figures: one number, or both where checkpoint and evaluation differ."""
        return self.step if self.step == self.eval_step else f"checkpoint {self.step}, evaluation {self.eval_step}"


def head_entropy_files(workdir: str) -> Dict[int, str]:
    """{step: path} of the run's eval/head_entropy_step*.npy."""
    return {int(re.findall(r"step(\d+)", f)[-1]): f
            for f in glob.glob(os.path.join(workdir, "eval", "head_entropy_step*.npy"))}


def newest_evaluation(workdir: str) -> Tuple[int, np.ndarray]:
    """(step, head entropy [L, H]) of the run's newest evaluation."""
    files = _evaluated(workdir)
    step = max(files)
    return step, np.load(files[step])


def _evaluated(workdir: str) -> Dict[int, str]:
    """head_entropy_files, refusing a run that has none."""
    files = head_entropy_files(workdir)
    if not files:
        raise ConfigError(f"workdir {workdir} has no eval/head_entropy_step*.npy; accepted: a run evaluated by "
                          f"aero-train (with sow_entropy on)")
    return files


def _restore_evaluated(workdir: str, evaluated) -> RestoredRun:
    """The run at its newest readable checkpoint among the `evaluated` steps, else at its newest readable one."""
    newest = restore_run(workdir)
    for step in sorted(set(newest.steps) & set(evaluated), reverse=True):
        if step == newest.step:
            return newest
        try:
            return restore_run(workdir, step)
        except ConfigError:  # unreadable, or deleted by a trainer meanwhile: an older one
            continue
    return newest


def load_run(workdir: str) -> Run:
    load_run_config(workdir)  # a clear error first when this is no run directory
    if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
        raise ConfigError(f"workdir {workdir} has no {METRICS_FILE}; accepted: a run directory written by aero-train")
    records = read_metrics(workdir)
    evals = [r for r in records if r["kind"] == "eval"]
    perplexity = {r["step"]: r.get("perplexity") for r in evals}  # a later record of a step wins
    run = _restore_evaluated(workdir, set(head_entropy_files(workdir)) & set(perplexity))  # refuses no checkpoint
    entropy = _evaluated(workdir)  # refuses a run without an evaluation
    eval_step = run.step if run.step in entropy else max(entropy)
    return Run(label=architecture_label(run.config.model), workdir=workdir, model_config=run.model.config,
               train=[r for r in records if r["kind"] == "train"], evals=evals, step=run.step, eval_step=eval_step,
               perplexity=perplexity.get(eval_step), head_entropy=np.load(entropy[eval_step]),
               params=run.state.params)


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
        rows.append({"architecture": r.label, "step": r.step_label,
                     "eval perplexity": None if r.perplexity is None else round(r.perplexity, 3),
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
    evaluated = {f"{r.label}, step {r.eval_step}": r for r in runs}  # the table's step (or its evaluation's)
    saved = {f"{r.label}, step {r.step}": r for r in runs}
    written = {
        "head_entropy": figures.heatmaps({k: r.head_entropy for k, r in evaluated.items()},
                                         value_label="entropy (nats)",
                                         title="Attention entropy of each head (validation, at the table's step)"),
        "entropy_ranges": figures.range_shares({k: entropy_range_shares(r.head_entropy) for k, r in evaluated.items()},
                                               title="Share of heads per entropy range, at the table's step"),
        "layer_entropy": figures.per_layer_curves({k: _series(r, "layer_entropy") for k, r in by.items()},
                                                  title="Mean attention entropy of each layer during training",
                                                  value_label="entropy (nats)"),
        "nonfinite": figures.per_layer_curves({k: _series(r, "nonfinite_attention") for k, r in by.items()},
                                              title="Non-finite attention probabilities per layer",
                                              value_label="count per log window"),
    }
    thresholds = {k: r.params[THRESHOLDS] for k, r in saved.items() if THRESHOLDS in r.params}
    if thresholds:
        written["thresholds"] = figures.heatmaps(thresholds, value_label="theta (fraction of log T)",
                                                 title="Learned entropy thresholds of each head")
    temperatures = {k: np.stack([np.asarray(model_temperatures(r.params[f"block_{l}"]["attn"], r.model_config))
                                 for l in range(r.model_config.num_layers)])
                    for k, r in saved.items() if r.model_config.learnable_temperature}
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
