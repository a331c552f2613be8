"""Per-token cost of generation with the key/value cache against a full pass per token.

    python benchmarks/decode.py            # the default model and a GPT-2-small-shaped one, context 512
    python benchmarks/decode.py --tiny --repeats 2   # a smoke run

For each model (random weights, batch 1) and each position p, the time to produce token p + 1:
cached, one jitted decode step with p tokens in a cache of the full context; uncached, one jitted
forward pass over all p tokens (what generation without a cache repeats for every token). Prints
one JSON object per model and position (medians over repeats), then one summary line per model
with the two targets: the cached cost at the last position within 2x of the first, and the cache at
least 10x faster than a full pass at the last position.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from aero_jax import presets
from aero_jax.model import AeroLM, init_variables
from aero_jax.sample import decode_step, init_cache

CONTEXT = 512
MODELS = {  # name: (preset, size)
    "default (L=4, H=4, d=128, bytes)": ("EReg(SM(t)+ScFuFFN)", dict(size="tiny", num_layers=4, num_heads=4,
                                                                      d_model=128, d_ff=512, vocab_size=257)),
    "GPT-2 small (L=12, H=12, d=768, V=50257)": ("EReg(SM(t)+ScFuFFN)", dict(size="gpt2-small")),
}
TINY = {"tiny": ("EReg(SM(t)+ScFuFFN)", dict(size="tiny", num_layers=2, num_heads=2, d_model=32, d_ff=64,
                                            vocab_size=257))}


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` (which blocks on its result), after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(preset: str, size: dict, context: int, positions, repeats: int):
    """Seconds per token at each position, (cached, uncached)."""
    model = AeroLM(presets.model_config(preset, **size, max_len=context))
    variables = init_variables(model, jax.random.key(0), seq_len=8)
    tokens_1xC = jax.random.randint(jax.random.key(1), (1, context), 0, model.config.vocab_size)
    step = jax.jit(lambda v, cache, t, p: decode_step(model, v, cache, t, p)[0])
    prefill = jax.jit(lambda v, cache, t, p: decode_step(model, v, cache, t, p)[1])
    full = jax.jit(lambda v, t: model.apply(v, t)[:, -1])
    for p in positions:
        cache = init_cache(model, 1, context)
        if p > 1:
            cache = prefill(variables, cache, tokens_1xC[:, :p - 1], jnp.arange(p - 1)[None])
        last_1x1, position_1x1 = tokens_1xC[:, p - 1:p], jnp.full((1, 1), p - 1)
        cached = median_seconds(lambda: step(variables, cache, last_1x1, position_1x1).block_until_ready(), repeats)
        uncached = median_seconds(lambda: full(variables, tokens_1xC[:, :p]).block_until_ready(), repeats)
        yield p, cached, uncached


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and context 64, for smoke tests")
    args = parser.parse_args()
    models, context = (TINY, 64) if args.tiny else (MODELS, CONTEXT)
    positions = (context // 32, context // 4, context)  # 16, 128, 512 at the full context
    for name, (preset, size) in models.items():
        rows = list(measure(preset, size, context, positions, args.repeats))
        for p, cached, uncached in rows:
            print(json.dumps({"model": name, "preset": preset, "position": p, "context": context,
                              "cached_tokens_per_s": round(1 / cached, 1),
                              "uncached_tokens_per_s": round(1 / uncached, 1),
                              "cached_ms": round(cached * 1e3, 3), "uncached_ms": round(uncached * 1e3, 3),
                              "speedup": round(uncached / cached, 1)}), flush=True)
        flatness = rows[-1][1] / rows[0][1]
        speedup = rows[-1][2] / rows[-1][1]
        print(json.dumps({"summary": name, "cached_last_over_first": round(flatness, 2),
                          "flat_within_2x": flatness <= 2,
                          "speedup_at_last": round(speedup, 1), "at_least_10x": speedup >= 10,
                          "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                          "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
    main()
