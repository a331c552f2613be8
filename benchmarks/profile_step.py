"""Where the training step's time goes: a jax.profiler trace of a few steps, each XLA operation named by the code
it came from, summed by part of the model.

    python benchmarks/profile_step.py --preset SM+LN+G --seq-len 128 --batch 4      # GPT-2 small
    python benchmarks/profile_step.py --tiny                                        # a smoke run

XLA keeps, for every operation of the compiled step, the JAX name stack it was traced under (its `op_name`:
module path, forward or backward, primitive); the trace gives each operation's device time. The script matches
the two by the operation's name, prints the operations that took longest and the time of each part: attention
scores (aero_jax.model.tempered_scores), the softmax (model.attention_probabilities), the weighted values, the entropy (entropy.attention_entropy) and its penalty,
the projections, the FFN, LayerNorm, embeddings and LM head, the cross-entropy, and the optimizer, each forward
and backward. Needs only jax, flax, optax and numpy besides the project.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

from aero_jax import optim, presets
from aero_jax.model import AeroLM
from aero_jax.train_step import create_train_state, jit_train_step

TINY = dict(num_layers=2, num_heads=2, d_model=32, d_ff=128, vocab_size=257)
# (part, pattern on the op_name): the first that matches names the operation's part of the step.
PARTS = (("entropy penalty", r"entropy_penalty"), ("attention entropy", r"attention_entropy"),
         ("attention scores", r"attention_scores"), ("attention softmax", r"attention_softmax"),
         ("weighted values", r"bhts,bshk->bthk"), ("attention projections", r"/attn/(query|key|value|qk|out)/"),
         ("attention, other (mask, temperatures, reshapes)", r"/attn/"),
         ("FFN", r"/ffn/"), ("LayerNorm", r"/ln"), ("cross-entropy", r"cross_entropy|log_softmax"),
         ("embeddings and LM head", r"AeroLM\)*/(?!block_)"), ("optimizer and metrics", r""))


def op_names(hlo_text: str) -> dict:
    """{operation name: its op_name} for every instruction of a compiled module's HLO text."""
    names = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text, re.MULTILINE):
        names.setdefault(match.group(1), match.group(2))
    return names


def part_of(op_name: str) -> str:
    direction = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else ""
    part = next(name for name, pattern in PARTS if re.search(pattern, op_name))
    return f"{part}, {direction}" if direction and part != "optimizer and metrics" else part


def traced_times(trace_dir: str) -> collections.Counter:
    """{event name: total microseconds} of the complete events of the one trace under `trace_dir`."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    times = collections.Counter()
    for event in events["traceEvents"] if isinstance(events, dict) else events:
        if event.get("ph") == "X":
            times[event["name"]] += event.get("dur", 0)
    return times


def profile(config, batch: int, steps: int) -> dict:
    model, optimizer = AeroLM(config), optim.adamw(1e-4)
    state = create_train_state(model, optimizer, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, config.max_len), 0, config.vocab_size)
    compiled = jit_train_step(model, optimizer).lower(state, tokens).compile()
    names = op_names(compiled.as_text())
    state, metrics = compiled(state, tokens)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, tokens)
            jax.block_until_ready(metrics)
        times = traced_times(trace_dir)
    ops = {name: us / steps for name, us in times.items() if name in names}
    total = sum(ops.values())
    parts = collections.Counter()
    for name, us in ops.items():
        parts[part_of(names[name])] += us
    top = [{"op": name, "ms": round(us / 1e3, 3), "share": round(us / total, 4),
            "op_name": re.sub(r"block_\d+", "block_*", names[name])} for name, us in
           sorted(ops.items(), key=lambda item: -item[1])]
    return {"step_ops_ms": round(total / 1e3, 3), "operations": len(ops),
            "parts": {part: {"ms": round(us / 1e3, 3), "share": round(us / total, 4)}
                      for part, us in parts.most_common()}, "top": top}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="SM+LN+G")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for smoke tests")
    parser.add_argument("--out", default="", help="write the whole profile to this JSON file")
    args = parser.parse_args(argv)
    config = presets.model_config(args.preset, size="gpt2-small", max_len=args.seq_len, **(TINY if args.tiny else {}))
    result = {"preset": args.preset, "seq_len": args.seq_len, "batch": args.batch, "backend": jax.default_backend(),
              "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
              **profile(config, args.batch, args.steps)}
    print(f"{args.preset}, T={args.seq_len}, batch {args.batch}, {result['device_kind']}: "
          f"{result['step_ops_ms']} ms of operations a step")
    for part, figures in result["parts"].items():
        print(f"  {figures['share']:6.1%} {figures['ms']:9.3f} ms  {part}")
    print("top operations:")
    for op in result["top"][:args.top]:
        print(f"  {op['share']:6.1%} {op['ms']:9.3f} ms  {op['op']:<28} {op['op_name']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
