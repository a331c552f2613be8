"""Ahead-of-time compilation for TPU topologies, on a machine without TPUs (aero-compile).

    aero-compile --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn --topology=v5e:2x4 [--json] [--dump=DIR]

libtpu compiles for a described slice (`jax.experimental.topologies`), so the run's own Program
(trainer.build_program: the same model, sharded state and jitted steps as aero-train) is lowered
for the slice's devices, every host's included, and compiled without running. The report gives
XLA's per-device memory against the chip's HBM and its FLOPs against flops.py's model FLOPs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import List, Optional, Tuple

import jax
from jax.experimental import topologies

from aero_jax import flops
from aero_jax.config import ConfigError
from aero_jax.run_config import architecture_label, model_config_from, validate
from aero_jax.trainer import build_program

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    chip_config: str  # how libtpu groups a chip's TensorCores: one device per chip ("megacore") or per core
    dims: int  # the topology's dimensions: AxB (v5e, v6e) or AxBxC (v4, v5p)


# HBM per chip from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e): v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e (Trillium) 32 GiB.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, "megacore", 3),
    "v5e": Chip("v5e", 16 * GiB, "default", 2),
    "v5p": Chip("v5p", 95 * GiB, "megacore", 3),
    "v6e": Chip("v6e", 32 * GiB, "default", 2),
}

# Slice names as Cloud TPU spells accelerator types: v4 and v5p count TensorCores (two a chip), v5e and v6e chips.
SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4", "v4-128": "v4:4x4x4",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4",
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8",
    "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}

ACCEPTED_TOPOLOGIES = (f"CHIP:AxB for {', '.join(c for c in CHIPS if CHIPS[c].dims == 2)}, CHIP:AxBxC for "
                       f"{', '.join(c for c in CHIPS if CHIPS[c].dims == 3)} (e.g. v5e:2x4, v4:2x2x1), or a slice "
                       f"name: {', '.join(SLICES)}")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # CHIP:AxB[xC]
    chip: Chip
    shape: Tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)


def parse_topology(text: str) -> Topology:
    """A topology from `v5e:2x4` or a slice name such as `v5e-8`; anything else is refused, listing the accepted."""
    spelled = SLICES.get(text.strip().lower(), text.strip().lower())
    chip_name, _, shape_text = spelled.partition(":")
    chip = CHIPS.get(chip_name)
    shape = tuple(int(d) for d in shape_text.split("x")) if re.fullmatch(r"\d+(x\d+)*", shape_text) else ()
    if chip is None or len(shape) != chip.dims or min(shape) < 1:
        raise ConfigError(f"--topology={text!r} is invalid; accepted: {ACCEPTED_TOPOLOGIES}")
    return Topology(spelled, chip, shape)


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def quiet_libtpu() -> None:
    """Compile only: JAX stays on the CPU, and libtpu gets placeholders for the host facts it would otherwise warn
    it cannot find (this machine is no TPU host, and nothing runs on one)."""
    jax.config.update("jax_platforms", "cpu")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles at once; no process owns a chip


def topology_devices(topology: Topology) -> List:
    """The devices of every host of the slice, as libtpu describes them."""
    if not libtpu_installed():
        raise ConfigError("compiling for a TPU topology needs libtpu, which is not installed; accepted: an "
                          "environment with the tpu extra (pip install -e '.[tpu]')")
    try:
        description = topologies.get_topology_desc(topology.name, "tpu", chip_config_name=topology.chip.chip_config)
    except jax.errors.JaxRuntimeError as error:
        if "INVALID_ARGUMENT" not in str(error):
            raise
        reason = str(error).splitlines()[0].split(": ", 1)[-1]
        raise ConfigError(f"--topology={topology.name} is refused by libtpu ({reason}); accepted: "
                          f"{ACCEPTED_TOPOLOGIES}") from None
    return list(description.devices)


# -- compiling ----------------------------------------------------------------------------------

_OUT_OF_MEMORY = re.compile(r"required[^(]*\(([\d.]+)([KMGT]?)\).*available HBM \(([\d.]+)([KMGT]?)\)", re.S)
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
# A matmul whose weights are gathered while it multiplies (fsdp) becomes a loop over the shards; XLA's cost
# analysis counts such a loop's body once, so its FLOPs fall short of the work done.
_WINDOWED_LOOP = re.compile(r"while\(.*body=%?[\w.]*windowed_dot_general")


@dataclasses.dataclass
class StepReport:
    """One compiled step on one device: XLA's memory and FLOPs, and the model's FLOPs for the same work."""

    step: str
    batch_size: int
    fits: bool
    hbm_bytes: int
    total_bytes: int  # XLA's peak of live buffers (arguments included), what it checks against the HBM it can use
    argument_bytes: Optional[int] = None
    output_bytes: Optional[int] = None
    temp_bytes: Optional[int] = None
    alias_bytes: Optional[int] = None
    code_bytes: Optional[int] = None
    windowed_loops: int = 0  # matmul loops XLA's FLOPs count once (see _WINDOWED_LOOP)
    allocated_bytes: Optional[int] = None  # the buffers' sizes added up; more than the peak, as not all live at once
    compiler_limit_bytes: Optional[int] = None  # what XLA said it can use, when it refused
    xla_flops: Optional[float] = None
    model_flops: float = 0.0
    compile_s: float = 0.0

    @property
    def headroom_bytes(self) -> int:
        return self.hbm_bytes - self.total_bytes

    @property
    def flops_ratio(self) -> Optional[float]:
        return self.xla_flops / self.model_flops if self.xla_flops and self.model_flops else None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "headroom_bytes": self.headroom_bytes, "flops_ratio": self.flops_ratio}


def compile_step(name: str, jitted, args, *, batch_size: int, hbm_bytes: int, model_flops: float,
                 dump_dir: Optional[str] = None) -> StepReport:
    """Lower and compile a jitted step for abstract arguments; a step XLA cannot fit is reported, not raised."""
    started = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        needed = _OUT_OF_MEMORY.search(str(error))
        if "RESOURCE_EXHAUSTED" not in str(error) or needed is None:
            raise
        required, limit = (int(float(needed[i]) * _UNITS[needed[i + 1]]) for i in (1, 3))
        return StepReport(name, batch_size, False, hbm_bytes, required, compiler_limit_bytes=limit,
                          model_flops=model_flops, compile_s=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    allocated = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                 - memory.alias_size_in_bytes + memory.generated_code_size_in_bytes)
    total = getattr(memory, "peak_memory_in_bytes", 0) or allocated  # the peak XLA checks against the HBM
    hlo = compiled.as_text()
    if dump_dir:
        with open(os.path.join(dump_dir, f"{name}_step.hlo.txt"), "x") as f:
            f.write(hlo)
    return StepReport(name, batch_size, total <= hbm_bytes, hbm_bytes, total,
                      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
                      temp_bytes=memory.temp_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
                      code_bytes=memory.generated_code_size_in_bytes, allocated_bytes=allocated,
                      windowed_loops=len(_WINDOWED_LOOP.findall(hlo)), xla_flops=float(cost.get("flops", 0.0)),
                      model_flops=model_flops, compile_s=seconds)


STEPS = ("train", "eval")


def checked_steps(names) -> Tuple[str, ...]:
    bad = [n for n in names if n not in STEPS] or ([] if names else ["(none)"])
    if bad:
        raise ConfigError(f"--steps={','.join(names)} is invalid; accepted: a comma-separated subset of "
                          f"{', '.join(STEPS)}")
    return tuple(names)


def compile_for_topology(config, topology: Topology, *, dump_dir: Optional[str] = None,
                         steps: Tuple[str, ...] = STEPS) -> dict:
    """Build the run's Program on the slice's devices and compile its steps; the report as a dict."""
    validate(config)
    devices = topology_devices(topology)
    program = build_program(config, devices)
    model_config = model_config_from(config.model)
    t, n = config.train, len(devices)
    seq_len = model_config.max_len
    per_row = {"train": flops.train_flops_per_token(model_config) * seq_len,
               "eval": flops.forward_flops(model_config, convention="executed")}
    state = program.abstract_state()
    work = {"train": (program.train_step, (state, program.abstract_batch(t.batch_size)), t.batch_size),
            "eval": (program.eval_step, (state.params, state.model_state, program.abstract_batch(t.eval_batch_size)),
                     t.eval_batch_size)}
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        taken = [f for f in (f"{s}_step.hlo.txt" for s in steps) if os.path.exists(os.path.join(dump_dir, f))]
        if taken:
            raise ConfigError(f"--dump={dump_dir} already holds {', '.join(taken)}; accepted: a folder without them "
                              f"(nothing is overwritten)")
    reports = {}
    for name in steps:
        jitted, args, batch = work[name]
        reports[name] = compile_step(name, jitted, args, batch_size=batch, hbm_bytes=topology.chip.hbm_bytes,
                                     model_flops=per_row[name] * batch / n, dump_dir=dump_dir).as_dict()
    return {"architecture": architecture_label(config.model), "seq_len": seq_len, "topology": topology.name,
            "chip": topology.chip.name, "device_kind": devices[0].device_kind, "devices": n,
            "hosts": len({d.process_index for d in devices}), "mesh": dict(program.mesh.shape),
            "grad_accum_steps": t.grad_accum_steps, "remat": model_config.remat, "hbm_bytes": topology.chip.hbm_bytes,
            "fits": all(r["fits"] for r in reports.values()), "steps": reports}


# -- the report ---------------------------------------------------------------------------------

def _in(unit: int):
    return lambda n: "-" if n is None else f"{n / unit:.2f}"


def format_report(report: dict) -> str:
    """The report as a table a person reads: one row per step, memory per device in GiB (MiB for small runs)."""
    largest = max(r["total_bytes"] for r in report["steps"].values())
    unit, size = ("GiB", _in(GiB)) if largest >= GiB // 4 else ("MiB", _in(2 ** 20))
    mesh = " ".join(f"{axis}={n}" for axis, n in report["mesh"].items())
    lines = [f"{report['architecture']} at T={report['seq_len']} on {report['topology']}: {report['devices']} x "
             f"{report['device_kind']} ({report['hosts']} host{'s' if report['hosts'] > 1 else ''}, "
             f"{report['hbm_bytes'] / GiB:.2f} GiB HBM each), mesh {mesh}, remat {report['remat']}",
             f"memory in {unit} per device (the outputs alias the donated arguments); FLOPs per device and step",
             f"{'step':<6}{'batch':>7}{'args':>9}{'temps':>9}{'outputs':>9}{'total':>9}{'headroom':>10}  {'fits':<5}"
             f"{'XLA GFLOP':>11}{'model GFLOP':>13}{'ratio':>7}{'compile s':>11}"]
    for r in report["steps"].values():
        ratio = "-" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}"
        xla = "-" if r["xla_flops"] is None else f"{r['xla_flops'] / 1e9:,.1f}"
        lines.append(f"{r['step']:<6}{r['batch_size']:>7}{size(r['argument_bytes']):>9}{size(r['temp_bytes']):>9}"
                     f"{size(r['output_bytes']):>9}{size(r['total_bytes']):>9}{size(r['headroom_bytes']):>10}  "
                     f"{'yes' if r['fits'] else 'NO':<5}{xla:>11}{r['model_flops'] / 1e9:>13,.1f}{ratio:>7}"
                     f"{r['compile_s']:>11.1f}")
    windowed = {r["step"]: r["windowed_loops"] for r in report["steps"].values() if r["windowed_loops"]}
    if windowed:
        lines.append(f"XLA's FLOPs count each windowed matmul loop (weights gathered while multiplying: "
                     f"{', '.join(f'{n} in {s}' for s, n in windowed.items())}) once, not once per shard, so they "
                     f"fall short here; a data-parallel mesh compares them with the model's")
    for r in report["steps"].values():
        if not r["fits"]:
            limit = f", XLA can use {r['compiler_limit_bytes'] / GiB:.2f}" if r["compiler_limit_bytes"] else ""
            lines.append(f"the {r['step']} step does not fit: it needs {r['total_bytes'] / GiB:.2f} GiB per device "
                         f"(HBM {r['hbm_bytes'] / GiB:.2f}{limit}); try a smaller batch, train.grad_accum_steps, "
                         f"model.remat=dots or block, or more fsdp")
    return "\n".join(lines)
