"""Tokens/s of one full jitted training step (forward, CE + entropy penalty, backward, AdamW).

    python benchmarks/step_throughput.py            # the issue's size: L=4 H=4 d=256 T=128 B=16 V=256
    python benchmarks/step_throughput.py --steps 2 --rounds 1 --tiny   # a smoke run

Prints one JSON object per line: the preset, whether the penalty is on, the median tokens/s over
interleaved rounds, step and compile time; then a summary line with the penalty's share of the
step (median over rounds of 1 - t_off / t_on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from aero_jax import optim, presets
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
    timers = [StepTimer(presets.model_config(name, **size, sow_entropy=penalty), BATCH, args.warmup)
              for name, penalty in RUNS]
    # Interleaved rounds: a shared machine's speed drifts, so each round times every run once.
    seconds = np.array([[timer.time(args.steps) for timer in timers] for _ in range(args.rounds)])
    for (name, penalty), timer, column in zip(RUNS, timers, seconds.T):
        median = float(np.median(column))
        print(json.dumps({"preset": name, "penalty": penalty, "tokens_per_s": round(timer.tokens_per_step / median, 1),
                          "step_ms": round(median * 1e3, 2), "compile_s": round(timer.compile_s, 2),
                          "loss": timer.loss, "batch": BATCH, **size}), flush=True)
    shares = 1 - seconds[:, 0] / seconds[:, 1]
    print(json.dumps({"summary": "SM+LN+G penalty cost", "penalty_share_of_step": round(float(np.median(shares)), 4),
                      "per_round": [round(float(x), 4) for x in shares], "rounds": args.rounds,
                      "steps_per_round": args.steps, "backend": jax.default_backend(), "devices": jax.device_count(),
                      "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
