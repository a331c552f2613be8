"""Tokens/s of one full jitted training step (forward, CE + entropy penalty, backward, AdamW).

    python benchmarks/step_throughput.py            # the issue's size: L=4 H=4 d=256 T=128 B=16 V=256
    python benchmarks/step_throughput.py --steps 3 --tiny   # a smoke run

Prints one JSON object per line: the preset, whether the penalty is on, tokens/s, step and
compile time; then a summary line with the penalty's share of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

from aero_jax import optim, presets
from aero_jax.model import AeroLM
from aero_jax.train_step import create_train_state, jit_train_step

SIZE = dict(num_layers=4, num_heads=4, d_model=256, d_ff=1024, vocab_size=256, max_len=128)
TINY = dict(num_layers=2, num_heads=2, d_model=32, d_ff=128, vocab_size=256, max_len=32)
BATCH = 16
# (preset, penalty on); penalty off also switches the entropy computation off.
RUNS = (("SM+LN+G", False), ("EReg(SM+LN+G)", True), ("EReg(SM(t)+ScFuFFN)", True))


def measure(name: str, penalty: bool, size: dict, batch: int, steps: int, warmup: int) -> dict:
    config = presets.model_config(name, **size, sow_entropy=penalty)
    result = measure_config(config, batch, steps, warmup)
    return {"preset": name, "penalty": penalty, **result, "batch": batch, **size}


def measure_config(config, batch: int, steps: int, warmup: int) -> dict:
    """Tokens/s of the jitted step for a ModelConfig, on random tokens, after `warmup` steps."""
    model = AeroLM(config)
    optimizer = optim.adamw(1e-3)
    state = create_train_state(model, optimizer, jax.random.key(0))
    step = jit_train_step(model, optimizer)
    batches = jax.random.randint(jax.random.key(1), (steps + warmup, batch, config.max_len), 0, config.vocab_size)

    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for i in range(1, warmup):
        state, metrics = step(state, batches[i])
    jax.block_until_ready(metrics)

    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        state, metrics = step(state, batches[i])
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {"tokens_per_s": round(batch * config.max_len / seconds, 1), "step_ms": round(seconds * 1e3, 2),
            "compile_s": round(compile_s, 2), "loss": float(metrics["loss"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for smoke tests")
    args = parser.parse_args()
    size = TINY if args.tiny else SIZE
    results = [measure(name, penalty, size, BATCH, args.steps, args.warmup) for name, penalty in RUNS]
    for result in results:
        print(json.dumps(result), flush=True)
    off, on = results[0]["step_ms"], results[1]["step_ms"]
    print(json.dumps({"summary": "SM+LN+G penalty cost", "penalty_share_of_step": round((on - off) / on, 4),
                      "backend": jax.default_backend(), "devices": jax.device_count(),
                      "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
