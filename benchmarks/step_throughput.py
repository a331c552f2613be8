"""Tokens/s of one full jitted training step (forward, CE + entropy penalty, backward, AdamW).

    python benchmarks/step_throughput.py            # the issue's size: L=4 H=4 d=256 T=128 B=16 V=256
    python benchmarks/step_throughput.py --steps 2 --rounds 1 --tiny   # a smoke run

Prints one JSON object per line: the preset, whether the penalty is on, the median tokens/s over
interleaved rounds, step and compile time, and the step's fraction of the matmul roofline; then a
summary line with the roofline and the penalty's share of the step (median over rounds of
1 - t_off / t_on). The roofline is this machine's float32 matmul rate, measured in every round
on the step's own matmul shapes (the best of them); a step's model FLOPs (aero_jax.flops) per
second over it is the fraction of the machine the step uses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

import jax.numpy as jnp

from aero_jax import flops, optim, presets
from aero_jax.model import AeroLM
from aero_jax.train_step import create_train_state, jit_train_step

SIZE = dict(num_layers=4, num_heads=4, d_model=256, d_ff=1024, vocab_size=256, max_len=128)
TINY = dict(num_layers=2, num_heads=2, d_model=32, d_ff=128, vocab_size=256, max_len=32)
BATCH = 16
# (preset, penalty on); penalty off also switches the entropy computation off.
RUNS = (("SM+LN+G", False), ("EReg(SM+LN+G)", True), ("EReg(SM(t)+ScFuFFN)", True))


class StepTimer:
    """One compiled step for a ModelConfig on random tokens; `time(steps)` gives seconds per step."""

    def __init__(self, config, batch: int, warmup: int):
        model = AeroLM(config)
        optimizer = optim.adamw(1e-3)
        self.state = create_train_state(model, optimizer, jax.random.key(0))
        self.step = jit_train_step(model, optimizer)
        self.tokens = jax.random.randint(jax.random.key(1), (batch, config.max_len), 0, config.vocab_size)
        self.tokens_per_step = batch * config.max_len
        start = time.perf_counter()
        self._run(1)
        self.compile_s = time.perf_counter() - start
        self._run(max(warmup - 1, 0))

    def _run(self, steps: int):
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.tokens)
        jax.block_until_ready(metrics)
        self.loss = float(metrics["loss"]) if metrics is not None else None

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        self._run(steps)
        return (time.perf_counter() - start) / steps


class MatmulRoofline:
    """Float32 GFLOP/s of this machine's matmul on the step's shapes: FFN in, FFN out, a kernel gradient."""

    def __init__(self, rows: int, d_model: int, d_ff: int):
        key = jax.random.key(2)
        shapes = ((rows, d_model, d_ff), (rows, d_ff, d_model), (d_model, rows, d_ff))
        self.operands = [(jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))) for m, k, n in shapes]
        self.flops = [2 * m * k * n for m, k, n in shapes]
        self.dot = jax.jit(jnp.dot)
        for a, b in self.operands:
            self.dot(a, b).block_until_ready()

    def gflops(self, repeats: int = 20) -> float:
        best = 0.0
        for (a, b), work in zip(self.operands, self.flops):
            start = time.perf_counter()
            for _ in range(repeats):
                out = self.dot(a, b)
            out.block_until_ready()
            best = max(best, work * repeats / (time.perf_counter() - start) / 1e9)
        return best


def measure_config(config, batch: int, steps: int, warmup: int) -> dict:
    """Tokens/s of the jitted step for a ModelConfig, after `warmup` steps."""
    timer = StepTimer(config, batch, warmup)
    seconds = timer.time(steps)
    return {"tokens_per_s": round(timer.tokens_per_step / seconds, 1), "step_ms": round(seconds * 1e3, 2),
            "compile_s": round(timer.compile_s, 2), "loss": timer.loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the runs interleaved within each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for smoke tests")
    args = parser.parse_args()
    size = TINY if args.tiny else SIZE
    configs = [presets.model_config(name, **size, sow_entropy=penalty) for name, penalty in RUNS]
    timers = [StepTimer(config, BATCH, args.warmup) for config in configs]
    roofline = MatmulRoofline(BATCH * size["max_len"], size["d_model"], size["d_ff"])
    # Interleaved rounds: a shared machine's speed drifts, so each round times every run and the roofline once.
    seconds, roofs = [], []
    for _ in range(args.rounds):
        seconds.append([timer.time(args.steps) for timer in timers])
        roofs.append(roofline.gflops())
    seconds, roofs = np.array(seconds), np.array(roofs)
    for (name, penalty), config, timer, column in zip(RUNS, configs, timers, seconds.T):
        median = float(np.median(column))
        step_gflops = flops.train_flops_per_token(config) * timer.tokens_per_step / column / 1e9
        print(json.dumps({"preset": name, "penalty": penalty, "tokens_per_s": round(timer.tokens_per_step / median, 1),
                          "step_ms": round(median * 1e3, 2), "compile_s": round(timer.compile_s, 2),
                          "model_gflop_per_step": round(flops.train_flops_per_token(config) * timer.tokens_per_step
                                                        / 1e9, 3),
                          "roofline_fraction": round(float(np.median(step_gflops / roofs)), 4),
                          "loss": timer.loss, "batch": BATCH, **size}), flush=True)
    shares = 1 - seconds[:, 0] / seconds[:, 1]
    print(json.dumps({"summary": "SM+LN+G penalty cost", "penalty_share_of_step": round(float(np.median(shares)), 4),
                      "per_round": [round(float(x), 4) for x in shares],
                      "matmul_roofline_gflops": round(float(np.median(roofs)), 1),
                      "roofline_per_round": [round(float(x), 1) for x in roofs], "rounds": args.rounds,
                      "steps_per_round": args.steps, "backend": jax.default_backend(), "devices": jax.device_count(),
                      "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
