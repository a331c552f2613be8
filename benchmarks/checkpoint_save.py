"""What the checkpoint fingerprints cost: their time against a whole save, GPT-2 small train state.

    python benchmarks/checkpoint_save.py [--preset SM+LN+G] [--size gpt2-small] [--rounds 3]

Prints the median time of `fingerprints(state)` (computed where the state lives, then fetched)
and of a whole save (`Checkpointer.save` + `wait`, local temporary folder) without and with them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax

from aero_jax import presets
from aero_jax.checkpoint import Checkpointer, fingerprints
from aero_jax.model import AeroLM
from aero_jax.optim import adamw
from aero_jax.train_step import create_train_state


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="SM+LN+G")
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = AeroLM(presets.model_config(args.preset, size=args.size))
    state = jax.jit(lambda: create_train_state(model, adamw(1e-3), jax.random.key(0)))()
    size_gb = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) / 1e9
    fingerprints(state)  # compile
    fingerprint_s = median_seconds(lambda: fingerprints(state), args.rounds)
    save_s = {on: save_seconds(state, fingerprint=on, rounds=args.rounds) for on in (False, True)}
    print(f"{args.preset} at {args.size}: train state {size_gb:.2f} GB on {jax.devices()[0].device_kind}")
    print(f"fingerprints alone: {fingerprint_s:.3f} s")
    print(f"save + wait without fingerprints: {save_s[False]:.3f} s; with: {save_s[True]:.3f} s "
          f"(+{save_s[True] / save_s[False] - 1:.0%})")


def save_seconds(state, *, fingerprint: bool, rounds: int) -> float:
    """Median time of a whole save (start and wait) into a fresh local folder."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Checkpointer(folder, keep=1, fingerprint=fingerprint)
        steps = iter(range(1, 1000))

        def save():
            checkpoints.save(next(steps), state, {})
            checkpoints.wait()

        save()  # the first save creates the folder layout
        seconds = median_seconds(save, rounds)
        checkpoints.close()
    return seconds


if __name__ == "__main__":
    main()
