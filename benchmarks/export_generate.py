"""Generation speed of the torch export against transformers' own GPT2LMHeadModel on the same weights.

    python benchmarks/export_generate.py              # GPT-2 small, batch 1, prompt 32, 128 new tokens
    python benchmarks/export_generate.py --tiny       # a smoke run

An SM+LN+G model (random weights, moved off their init) is folded into both layouts: modeling_aero.py
(AeroForCausalLM) and the hf layout (GPT2LMHeadModel). Greedy generation of each, interleaved round by
round, gives ms per generated token (medians over rounds); then the export's cached generation against
generation without a cache (a full forward pass per token) from a prompt that fills the context to 512.
Prints one JSON line per measurement and a summary line with the two targets: within 1.2x of
GPT2LMHeadModel, and the cache at least 10x faster than no cache at context 512.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from aero_jax.export import fold, hf
from aero_jax.export.parity import moved_model, torch_model

SIZES = {"GPT-2 small": dict(size="gpt2-small", max_len=512), "tiny": dict(size="tiny", vocab_size=257, max_len=64)}


def gpt2_model(c, params, state):
    import transformers

    config = transformers.GPT2Config(**{k: v for k, v in hf.gpt2_config(c, eot_id=0).items()
                                        if k not in ("model_type", "architectures")})
    model = transformers.GPT2LMHeadModel(config)
    tensors = hf.gpt2_tensors(fold.plain_tensors(c, params, state), c)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
    return model.eval()


def uncached_greedy(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence for every token."""
    for _ in range(new_tokens):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def ms_per_token(generate, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = generate()
    assert out.shape[1] >= new_tokens
    return (time.perf_counter() - start) * 1e3 / new_tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size_name = "tiny" if args.tiny else "GPT-2 small"
    model, params, state = moved_model("SM+LN+G", **SIZES[size_name])
    c = model.config
    aero, gpt2 = torch_model(c, params, state), gpt2_model(c, params, state)
    prompt_len, new_tokens = (8, 16) if args.tiny else (32, 128)
    prompt = torch.from_numpy(np.random.default_rng(0).integers(0, c.vocab_size, (1, prompt_len)))
    common = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    greedy = {"AeroForCausalLM.generate": lambda: aero.generate(prompt, **common),
              "AeroForCausalLM.aero_generate": lambda: aero.aero_generate(prompt, max_new_tokens=new_tokens),
              "GPT2LMHeadModel.generate": lambda: gpt2.generate(prompt, **common)}
    assert torch.equal(greedy["AeroForCausalLM.generate"](), greedy["GPT2LMHeadModel.generate"]())  # warm-up
    times = {name: [] for name in greedy}
    for _ in range(args.rounds):  # interleaved: a slower moment of the machine costs every contender alike
        for name, generate in greedy.items():
            times[name].append(ms_per_token(generate, new_tokens))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name, ms in medians.items():
        print(json.dumps({"model": size_name, "generate": name, "batch": 1, "prompt": prompt_len,
                          "new_tokens": new_tokens, "ms_per_token": round(ms, 2)}))
    context = c.max_len
    long_prompt = torch.from_numpy(np.random.default_rng(1).integers(0, c.vocab_size, (1, context - new_tokens)))
    cached = ms_per_token(lambda: aero.aero_generate(long_prompt, max_new_tokens=new_tokens), new_tokens)
    uncached = ms_per_token(lambda: uncached_greedy(aero, long_prompt, new_tokens), new_tokens)
    print(json.dumps({"model": size_name, "context": context, "cached_ms_per_token": round(cached, 2),
                      "uncached_ms_per_token": round(uncached, 2)}))
    ratio = medians["AeroForCausalLM.generate"] / medians["GPT2LMHeadModel.generate"]
    print(f"{size_name} on {platform.machine()} ({os.cpu_count()} CPUs, torch {torch.__version__}): export "
          f"{ratio:.2f}x GPT2LMHeadModel's time per token (target <= 1.2x); cached {uncached / cached:.1f}x faster "
          f"than uncached at context {context} (target >= 10x)")


if __name__ == "__main__":
    main()
