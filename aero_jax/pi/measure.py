"""aero-pi-measure: a trained run's forward pass under real 2-party computation, and what it costs.

    aero-pi-measure --workdir W [--step N] [--seq-len T] [--layers K] [--protocol cheetah|semi2k] [--out DIR]
        [--json]

Folds the run's checkpoint (as aero-export does), gives the client (party 0) T tokens of the
run's validation text and the server (party 1) the weights, and runs the forward, embedding and
LM head included, under SecretFlow SPU (`private_forward.py`, in its own environment `.venv-pi`:
`make pi-env`). Reports the measured bytes, CPU seconds and messages per kind of operation, the
cost model's prediction beside them (aero-pi-cost), the private logits against the plaintext
ones, and an estimated WAN latency. `--layers K` runs the first K blocks and scales each block's
cost to all L. The report is kept as OUT/pi_measured_step{N}_T{T}_L{K}_{protocol}.json (OUT: the
run's folder by default, where the study page reads it). See docs/pi_cost.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional

import numpy as np
from etils import epath

from aero_jax.config import ConfigError, ModelConfig
from aero_jax.errors import RunFailed, argparse_main, honour_ctrl_c
from aero_jax.evaluate import load_run_config, restore_run, run_data
from aero_jax.export import WEIGHTS_FILE, aero_config, fold, save_tensors
from aero_jax.pi.cost import ROUND_TRIP_MIN, load_coefficients, pi_cost, workload
from aero_jax.run_config import architecture_label, model_config_from
from aero_jax.workdir import check_output_folder, write_text_atomically

PROTOCOLS = ("cheetah", "semi2k")
WORKER = pathlib.Path(__file__).with_name("private_forward.py")
PI_PYTHON_ENV = "AERO_PI_PYTHON"
PI_VENV = ".venv-pi"
KINDS = ("embedding", "LayerNorm", "linear", "softmax", "GELU", "ReLU", "leaky ReLU", "LM head", "rest")
WAN_BYTES_PER_S = 100e6 / 8  # the papers' WAN: 100 Mbps
WAN_ROUND_TRIP_S = 0.080  # and 80 ms
# Peak resident memory of the two parties in one process: a base plus, for the largest operation, a cost per
# element, fitted to the peaks measured at GPT-2 small, T=128 (benchmarks/results/pi_measured.json): 10.5 GB at
# the [128, 768] x [768, 3072] product, 5.8 GB at the softmax over [12, 128, 128], 11.9 GB at tanh GELU or ReLU
# and 14.5 GB at erf GELU over [128, 3072]; 1.8 GB for the tiny test model.
MEMORY_BASE_GB = 2.0
MEMORY_GB_PER_ELEMENT = {"product": 3.3e-6,  # of the product's inputs and output
                         "softmax": 20e-6, "erf GELU": 32e-6, "activation": 25e-6}
MEMORY_HEADROOM = 0.85

_HEADER = re.compile(r"SPU execution (\S+) completed.*execution took ([0-9.e+-]+)s")
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Killed)\b")
_LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")


@dataclasses.dataclass(frozen=True)
class LinkTraffic:
    """What party 0's side of the link carried during one program: both directions, so the whole 2PC traffic."""

    bytes: int
    messages: int  # send + receive actions: an upper bound on the program's communication rounds
    execution_s: float


def parse_profile(lines: Iterable[str]) -> Dict[str, LinkTraffic]:
    """Program name -> its traffic, from SPU's profile log of party 0 (one header line, then a link line)."""
    traffic, current = {}, None
    for line in lines:
        header = _HEADER.search(line)
        if header:
            current = (header.group(1), float(header.group(2)))
            continue
        link = _LINK.search(line)
        if link and current:
            send, recv, send_actions, recv_actions = map(int, link.groups())
            traffic[current[0]] = LinkTraffic(send + recv, send_actions + recv_actions, current[1])
            current = None
    return traffic


def block_scales(c: ModelConfig, layers: int) -> Dict[str, float]:
    """How many times the whole model repeats what the first `layers` blocks measured, per site."""
    measured_ffn = sum(c.has_ffn(layer) for layer in range(layers))
    total_ffn = sum(c.has_ffn(layer) for layer in range(c.num_layers))
    if total_ffn and not measured_ffn:
        raise ConfigError(f"--layers {layers} measures no block with an FFN, but the model has {total_ffn}; "
                          f"accepted: --layers covering an FFN layer (the FFN layers are {list(c.ffn_layers or [])})")
    return {"attention": c.num_layers / layers, "ffn": total_ffn / measured_ffn if measured_ffn else 0.0,
            "model": 1.0}


def largest_product_elements(c: ModelConfig, seq_len: int) -> int:
    """Inputs and output of the largest matrix product of the forward (the vocabulary is split into chunks no
    wider than the FFN, as private_forward.py does)."""
    width, head_dim = max(c.d_ff, c.d_model), c.d_model // c.num_heads
    shapes = [(seq_len, c.d_model, width), (seq_len, width, c.d_model), (seq_len, c.d_model, c.d_model)]
    scores = c.num_heads * (2 * seq_len * head_dim + seq_len * seq_len)  # q k^T of every head
    return max([scores] + [t * i + i * o + t * o for t, i, o in shapes])


def peak_memory_gb(c: ModelConfig, seq_len: int) -> float:
    """The estimated peak of the forward: its largest product, softmax or activation."""
    per_element = MEMORY_GB_PER_ELEMENT
    candidates = [per_element["product"] * largest_product_elements(c, seq_len),
                  per_element["softmax"] * c.num_heads * seq_len * seq_len]
    if any(c.has_ffn(layer) for layer in range(c.num_layers)) and not c.ffn_fused and c.activation != "identity":
        erf = c.activation == "gelu" and c.gelu_form == "exact"
        candidates.append(per_element["erf GELU" if erf else "activation"] * seq_len * c.d_ff)
    return MEMORY_BASE_GB + max(candidates)


def available_memory_gb() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2 ** 20


def check_fits(c: ModelConfig, seq_len: int, available_gb: float) -> None:
    """Refuse, before anything starts, a size whose largest product would not fit in memory."""
    needed = peak_memory_gb(c, seq_len)
    if needed <= MEMORY_HEADROOM * available_gb:
        return
    fitting = [t for t in range(seq_len - 1, 0, -1) if peak_memory_gb(c, t) <= MEMORY_HEADROOM * available_gb]
    hint = f"--seq-len {fitting[0]} or less" if fitting else "a machine with more memory"
    raise ConfigError(f"--seq-len {seq_len} needs about {needed:.1f} GB at its largest operation and {available_gb:.1f} "
                      f"GB is available; accepted: {hint} (or --memory-gb, if more can be freed)")


def pi_python() -> str:
    """The interpreter of the SPU environment: $AERO_PI_PYTHON, or .venv-pi in the working directory or beside
    this checkout."""
    if os.environ.get(PI_PYTHON_ENV):
        if not os.path.isfile(os.environ[PI_PYTHON_ENV]):
            raise ConfigError(f"{PI_PYTHON_ENV}={os.environ[PI_PYTHON_ENV]} does not exist; accepted: the python of an "
                              f"environment with spu 0.9.5 (`make pi-env` builds {PI_VENV})")
        return os.environ[PI_PYTHON_ENV]
    for root in (os.getcwd(), str(WORKER.parents[2])):
        candidate = os.path.join(root, PI_VENV, "bin", "python")
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"aero-pi-measure needs SecretFlow SPU in its own environment, which is not built; accepted: "
                      f"`make pi-env` (builds {PI_VENV}: spu 0.9.5 with jax 0.4.34, about 1 GB) or "
                      f"{PI_PYTHON_ENV}=/path/to/python with spu installed")


def write_model(c: ModelConfig, params, model_state, tokens: np.ndarray, out: str) -> None:
    """The folded float32 weights (aero-export's AERO layout), config.json and the client's tokens.json."""
    save_tensors(fold.plain_tensors(c, params, model_state), os.path.join(out, WEIGHTS_FILE), "float32")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(aero_config(c, {}), f)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump([int(t) for t in tokens], f)


def run_worker(model_dir: str, *, layers: int, protocol: str, python: str, blocks_only: bool = False,
               progress=None) -> tuple:
    """Run private_forward.py in the SPU environment; (its result, the traffic of each program). `blocks_only`:
    from the embedded tokens through the blocks, without the vocabulary products (benchmarks/pi_measured.py)."""
    result_path = os.path.join(model_dir, "result.json")
    command = [python, str(WORKER), "--model", model_dir, "--layers", str(layers), "--protocol", protocol,
               "--result", result_path] + (["--blocks-only"] if blocks_only else [])
    log: List[str] = []
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=environment) as worker:
        try:
            for line in worker.stdout:
                log.append(line)
                if progress and line.startswith("@@segment"):
                    progress(line.split(maxsplit=1)[1].strip())
        except BaseException:  # Ctrl-C: the worker, holding gigabytes, ends with this process
            worker.kill()
            worker.wait()
            raise
    if worker.returncode != 0 or not os.path.isfile(result_path):
        errors = [line.strip() for line in log if _ERROR_LINE.match(line)] or [line.strip() for line in log[-1:]]
        raise RunFailed(f"the private forward failed (exit status {worker.returncode}): "
                        f"{errors[-1][-300:] if errors else 'no output'}")
    with open(result_path) as f:
        return json.load(f), parse_profile(log)


def kind_totals(segments: List[dict], traffic: Dict[str, LinkTraffic], scales: Dict[str, float]) -> Dict[str, dict]:
    """Per kind of operation: measured and scaled bytes, CPU and wall seconds, messages."""
    totals: Dict[str, dict] = {}
    for segment in segments:
        link = traffic.get(segment["name"])
        if link is None:
            raise RunFailed(f"SPU's profile has no traffic for the program {segment['name']}; the log format of this "
                            f"spu version is not the one aero-pi-measure reads (spu 0.9.5)")
        scale = scales[segment["site"]]
        row = totals.setdefault(segment["kind"], dict.fromkeys(
            ("bytes", "cpu_s", "wall_s", "messages", "scaled_bytes", "scaled_cpu_s", "scaled_wall_s",
             "scaled_messages"), 0.0))
        for name, value in (("bytes", link.bytes), ("cpu_s", segment["cpu_s"]), ("wall_s", segment["wall_s"]),
                            ("messages", link.messages)):
            row[name] += value
            row[f"scaled_{name}"] += value * scale
    return {kind: totals[kind] for kind in KINDS if kind in totals}


def stated_round_trips(c: ModelConfig, seq_len: int) -> float:
    """The round trips the cost model fitted to the papers' latencies for this architecture (per LayerNorm, per
    activation layer, per matrix product)."""
    coefficients, features = load_coefficients()["latency_min"], workload(c, seq_len).features()
    return sum(coefficients[name] * features[name] / ROUND_TRIP_MIN for name in
               ("layernorm_round_trips", "activation_round_trips", "matmul_round_trips"))


def wan_latency_s(total_bytes: float, compute_s: float, round_trips: float) -> float:
    """Transfer at 100 Mbps, plus the measured compute, plus the round trips at 80 ms."""
    return total_bytes / WAN_BYTES_PER_S + compute_s + round_trips * WAN_ROUND_TRIP_S


def logit_agreement(private: np.ndarray, plain: np.ndarray) -> dict:
    return {"max_abs_error": float(np.max(np.abs(private - plain))),
            "argmax_agreement": float(np.mean(private.argmax(-1) == plain.argmax(-1)))}


def report(c: ModelConfig, name: str, seq_len: int, layers: int, worker_result: dict,
           traffic: Dict[str, LinkTraffic]) -> dict:
    """Everything aero-pi-measure prints, as one dict."""
    kinds = kind_totals(worker_result["segments"], traffic, block_scales(c, layers))
    total = {key: sum(row[key] for row in kinds.values()) for key in next(iter(kinds.values()))}
    model = pi_cost(c, seq_len, name=name)
    rounds = stated_round_trips(c, seq_len)
    latency_s = wan_latency_s(total["scaled_bytes"], total["scaled_wall_s"], rounds)
    return {
        "arch": name, "seq_len": seq_len, "layers_measured": layers, "num_layers": c.num_layers,
        "settings": worker_result["settings"], "warm_up_s": worker_result["warm_up_s"],
        "warm_up_bytes": traffic["warm_up"].bytes if "warm_up" in traffic else None, "kinds": kinds,
        "total": total,
        "model": {"comm_gb": model["comm_gb"], "latency_min": model["latency_min"],
                  "ratio_comm": total["scaled_bytes"] / 1e9 / model["comm_gb"]},
        "wan_estimate": {"latency_min": latency_s / 60, "round_trips": rounds,
                         "round_trips_upper_bound": total["scaled_messages"]},
        "logits": logit_agreement(np.asarray(worker_result["private_output"]),
                                  np.asarray(worker_result["plaintext_output"])),
        "peak_rss_gb": max(s["peak_rss_mb"] for s in worker_result["segments"]) / 1024,
    }


def run_tokens(run, seq_len: int) -> np.ndarray:
    """The client's input: the first T tokens of the run's first validation row."""
    _, val_rows = run_data(run.config, run.model.config.max_len)
    return np.asarray(val_rows[0])[:seq_len]


def measure(workdir: str, *, step: Optional[int] = None, seq_len: Optional[int] = None,
            layers: Optional[int] = None, protocol: str = "cheetah", memory_gb: Optional[float] = None,
            progress=None) -> dict:
    """The measured private forward of a run (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol={protocol} is invalid; accepted: {', '.join(PROTOCOLS)}")
    run = restore_run(workdir, step)
    c = model_config_from(run.config.model)
    seq_len = c.max_len if seq_len is None else seq_len
    layers = c.num_layers if layers is None else layers
    if not 1 <= seq_len <= c.max_len:
        raise ConfigError(f"--seq-len {seq_len} is invalid; accepted: 1..{c.max_len} (the run's max_len)")
    if not 1 <= layers <= c.num_layers:
        raise ConfigError(f"--layers {layers} is invalid; accepted: 1..{c.num_layers}")
    tokens = run_tokens(run, seq_len)
    out = measure_model(c, architecture_label(run.config.model), run.state.params, run.state.model_state, tokens,
                        layers=layers, protocol=protocol, memory_gb=memory_gb, progress=progress)
    return {"workdir": workdir, "step": run.step, **out}


def measure_model(c: ModelConfig, name: str, params, model_state, tokens: np.ndarray, *, layers: int,
                  protocol: str = "cheetah", python: Optional[str] = None, memory_gb: Optional[float] = None,
                  progress=None) -> dict:
    """The measured private forward of a model's first `layers` blocks over `tokens`, scaled to all blocks."""
    block_scales(c, layers)
    check_fits(c, len(tokens), available_memory_gb() if memory_gb is None else memory_gb)
    python = python or pi_python()
    with tempfile.TemporaryDirectory(prefix="aero-pi-") as model_dir:
        write_model(c, params, model_state, tokens, model_dir)
        result, traffic = run_worker(model_dir, layers=layers, protocol=protocol, python=python,
                                     progress=progress)
    return report(c, name, len(tokens), layers, result, traffic)


def saved_report_path(folder: str, step: int, seq_len: int, layers: int, protocol: str) -> str:
    """Where aero-pi-measure keeps a report: one file per checkpoint, size and protocol, so earlier reports stay."""
    return os.path.join(folder, f"pi_measured_step{step}_T{seq_len}_L{layers}_{protocol}.json")


def saved_measurement(workdir: str, step: int, seq_len: int, protocol: str = "cheetah") -> Optional[dict]:
    """The saved report of a run's checkpoint `step` at T that measured the most blocks, or None (the study page's
    measured column). Reports named before the step was in the name count by the step they hold."""
    best = None
    for path in glob.glob(os.path.join(glob.escape(workdir), f"pi_measured_*T{seq_len}_L*_{protocol}.json")):
        with open(path) as f:
            report = json.load(f)
        if report.get("step") == step and (best is None or report["layers_measured"] > best["layers_measured"]):
            best = report
    return best


def text(r: dict) -> str:
    """The report as a table a person reads."""
    scaled = r["layers_measured"] < r["num_layers"]
    lines = [f"{r['arch']} (step {r.get('step', '-')}), T={r['seq_len']}, {r['layers_measured']} of "
             f"{r['num_layers']} blocks measured{', scaled to all' if scaled else ''}; "
             f"{r['settings']['protocol']}, {r['settings']['field']}, "
             f"{r['settings']['fxp_fraction_bits']} fraction bits, weights {r['settings']['weights']}",
             f"{'kind':<12} {'MB':>10} {'share':>6} {'CPU s':>9} {'wall s':>9} {'messages':>10}"]
    total = r["total"]
    for kind, row in list(r["kinds"].items()) + [("total", total)]:
        lines.append(f"{kind:<12} {row['scaled_bytes'] / 1e6:>10.1f} {row['scaled_bytes'] / total['scaled_bytes']:>6.1%} "
                     f"{row['scaled_cpu_s']:>9.1f} {row['scaled_wall_s']:>9.1f} {row['scaled_messages']:>10.0f}")
    model, wan, logits = r["model"], r["wan_estimate"], r["logits"]
    lines += [
        f"cost model (aero-pi-cost, fitted to the papers' SecretFlow rows): {model['comm_gb']:.3f} GB, "
        f"{model['latency_min']:.2f} min; measured / model communication: {model['ratio_comm']:.2f}x",
        f"estimated WAN latency (100 Mbps, 80 ms; an estimate, not a measurement): {wan['latency_min']:.2f} min = "
        f"transfer + measured compute + {wan['round_trips']:.0f} round trips (the cost model's fitted count; "
        f"the messages give an upper bound of {wan['round_trips_upper_bound']:.0f})",
        f"private vs plaintext logits: max abs error {logits['max_abs_error']:.4g}, argmax agreement "
        f"{logits['argmax_agreement']:.1%}; one-time setup excluded (a warm-up program: {r['warm_up_s']:.1f} s, "
        f"{(r['warm_up_bytes'] or 0) / 1e6:.1f} MB); "
        f"peak memory {r['peak_rss_gb']:.1f} GB"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aero-pi-measure", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a run directory")
    p.add_argument("--step", type=int, help="the checkpoint (default: the newest)")
    p.add_argument("--seq-len", type=int, help="tokens of the client's input (default: the run's max_len)")
    p.add_argument("--layers", type=int, help="measure the first K blocks and scale to all (default: all)")
    p.add_argument("--protocol", default="cheetah", help=f"one of {', '.join(PROTOCOLS)}")
    p.add_argument("--memory-gb", type=float, help="memory the run may take (default: what the machine has free)")
    p.add_argument("--out", help="the folder the report is kept in (default: the workdir, where the study page "
                                 "reads it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def check_memory_gb(memory_gb: Optional[float]) -> None:
    """Refuse a --memory-gb that no size fits in (nan, inf, zero or less), before anything starts."""
    if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
        raise ConfigError(f"--memory-gb {memory_gb} is invalid; accepted: a positive number of GB")


def save_report(r: dict, folder: str, protocol: str) -> str:
    """Keep the report in `folder`; a failure says it is printed above, since a measurement is costly to redo."""
    path = saved_report_path(folder, r["step"], r["seq_len"], r["layers_measured"], protocol)
    try:
        epath.Path(folder).mkdir(parents=True, exist_ok=True)
        write_text_atomically(epath.Path(path), json.dumps(r, indent=1))
    except OSError as error:
        raise RunFailed(f"cannot write the report {path} ({error.strerror or error}); the measurement is printed "
                        f"above, to keep by hand (--out DIR keeps the next one in another folder)") from error
    return path


def _run(args) -> None:
    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    check_memory_gb(args.memory_gb)
    # Where the report goes is checked before the measurement, which takes up to half an hour: an --out first, the
    # run's own folder once the run is known to be there and readable (else that is what is named).
    if args.out:
        check_output_folder(args.out, flag="--out")
    load_run_config(args.workdir)
    if not args.out:
        check_output_folder(args.workdir, flag="--out")
    out = args.out or args.workdir
    r = measure(args.workdir, step=args.step, seq_len=args.seq_len, layers=args.layers, protocol=args.protocol,
                memory_gb=args.memory_gb, progress=progress)
    print(json.dumps(r) if args.json else text(r), flush=True)  # before saving: a report that cannot be kept is seen
    try:
        saved = save_report(r, out, args.protocol)
    except RunFailed:
        if not args.json:
            print(json.dumps(r), flush=True)  # the whole report too, to keep by hand
        raise
    if not args.json:
        print(f"written: {saved}")


def main(argv=None):
    honour_ctrl_c()  # a measurement started from a script's background job can still be stopped
    argparse_main("aero-pi-measure", _parser(), _run, argv)


if __name__ == "__main__":
    main()
