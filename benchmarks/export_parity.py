"""How exactly each architecture leaves JAX: its export format and the largest logit difference, as a table.

    python benchmarks/export_parity.py > table.md     (docs/export.md carries its output)

For every preset at a small size (L=3, H=2, d=32, T=32, bytes), parameters moved off their init as
training moves them: the format `aero-export --format auto` picks (and what keeps GPT-2 from
expressing the rest), then max |logit difference| and max |entropy difference| between JAX and the
PyTorch export over the parity inputs, in float32 and in bfloat16.
"""

import platform
import time

import jax.numpy as jnp

from aero_jax import presets
from aero_jax.export import hf
from aero_jax.export.parity import max_differences, moved_model, parity_inputs, torch_model
from aero_jax.model import logits_and_entropy

SIZE = dict(size="tiny", num_layers=3, vocab_size=257, max_len=32)


def measure(name: str) -> dict:
    model, params, state = moved_model(name, **SIZE)
    c = model.config
    variables = {"params": params, **state}
    rows = parity_inputs(c.vocab_size, c.max_len).values()
    f32 = [max_differences(model, variables, torch_model(c, params, state), r) for r in rows]
    bf16 = [max_differences(model, variables, torch_model(c, params, state, "bfloat16"), r) for r in rows]
    logits, _, _ = logits_and_entropy(model, variables, jnp.asarray(list(rows)[0]))
    blocker = hf.gpt2_blocker(c)
    return {"name": name, "format": "torch" if blocker else "hf", "blocker": blocker or "",
            "logit": max(d[0] for d in f32), "entropy": max(d[1] for d in f32),
            "bf16_relative": max(d[0] for d in bf16) / float(jnp.abs(logits).max())}


def main():
    start = time.perf_counter()
    names = [n for n in presets.names() if not n.startswith("EReg(")] + ["EReg(SM(t)+ScFuFFN)"]
    rows = [measure(n) for n in names]
    print(f"<!-- python benchmarks/export_parity.py, {platform.machine()}, {time.perf_counter() - start:.0f} s -->")
    print("| architecture | `--format auto` | why not GPT-2 | max abs logit diff, float32 | max abs entropy diff, "
          "float32 | max logit diff / max abs logit, bfloat16 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['format']} | {r['blocker']} | {r['logit']:.1e} | {r['entropy']:.1e} | "
              f"{r['bf16_relative']:.1e} |")


if __name__ == "__main__":
    main()
