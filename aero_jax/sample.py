"""Text generation with a key/value cache: greedy, temperature, top-k and top-p sampling.

    aero-sample --workdir W --prompt "def fib(n):" --max-new-tokens 100 --temperature 0.8 --top-k 40

Prompts of different lengths are left-padded to the longest: padding tokens get position -1, so
every real token keeps its absolute position (position embedding and learned temperatures) and
attends to no padding, and every row's next token is predicted from the same last slot. The prompt
is read in one pass that fills the cache; each new token then costs one position.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from typing import List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aero_jax import data
from aero_jax.config import MAX_SEED, ConfigError
from aero_jax.errors import argparse_main
from aero_jax.evaluate import restore_run
from aero_jax.model import CACHE, PAD_POSITION, AeroLM

DEFAULT_MAX_NEW_TOKENS = 200


class Sampling(NamedTuple):
    """How the next token is chosen from the logits (temperature 0: the argmax; top_k 0, top_p 1: no filter)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def check_sampling(sampling: Sampling) -> None:
    """One clear error for a setting outside what the sampler accepts."""
    if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        raise ConfigError(f"temperature={sampling.temperature} is invalid; accepted: a number >= 0 "
                          f"(0 picks the most likely token)")
    if isinstance(sampling.top_k, bool) or int(sampling.top_k) != sampling.top_k or sampling.top_k < 0:
        raise ConfigError(f"top_k={sampling.top_k} is invalid; accepted: an integer >= 0 (0 keeps every token)")
    if not 0 < sampling.top_p <= 1:
        raise ConfigError(f"top_p={sampling.top_p} is invalid; accepted: a number in (0, 1] (1 keeps every token)")


def top_k_keep(logits_BxV: jnp.ndarray, k: int) -> jnp.ndarray:
    """[B, V] boolean: the k most likely tokens, and every token tied with the k-th (k 0 or >= V: all)."""
    if k == 0 or k >= logits_BxV.shape[-1]:
        return jnp.ones(logits_BxV.shape, bool)
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    return logits_BxV >= kth_Bx1


def top_p_keep(logits_BxV: jnp.ndarray, p: float) -> jnp.ndarray:
    """[B, V] boolean: the most likely tokens whose probabilities first reach p in total (nucleus), ties kept.

    A token is kept when the tokens more likely than it hold less than p together; every token as likely
    as the least likely kept one is kept too, so the kept set does not depend on how ties are sorted.
    """
    if p >= 1:
        return jnp.ones(logits_BxV.shape, bool)
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    sorted_BxV = -jnp.sort(-probs_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(sorted_BxV, axis=-1) - sorted_BxV
    kept_B = jnp.sum(mass_before_BxV < p, axis=-1)  # >= 1: nothing comes before the most likely token
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
    return probs_BxV >= threshold_Bx1


def choose(logits_BxV: jnp.ndarray, rng: jax.Array, sampling: Sampling) -> jnp.ndarray:
    """[B] int32: the next token of each row."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / sampling.temperature
    top_k_BxV = jnp.where(top_k_keep(scaled_BxV, sampling.top_k), scaled_BxV, -jnp.inf)
    # The nucleus of what top-k kept, renormalised, as Hugging Face's samplers apply them one after the other.
    kept_BxV = jnp.where(top_p_keep(top_k_BxV, sampling.top_p), top_k_BxV, -jnp.inf)
    return jax.random.categorical(rng, kept_BxV, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int = 0):
    """(tokens [B, P], positions [B, P]) of prompts left-padded to the longest; padding has position -1."""
    longest = max(len(p) for p in prompts)
    tokens_BxP = np.full((len(prompts), longest), pad_id, np.int32)
    positions_BxP = np.full((len(prompts), longest), PAD_POSITION, np.int32)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        tokens_BxP[row, start:] = prompt
        positions_BxP[row, start:] = np.arange(len(prompt))
    return tokens_BxP, positions_BxP


def init_cache(model: AeroLM, batch_size: int, length: int) -> dict:
    """An empty key/value cache for `batch_size` sequences of up to `length` tokens."""
    if length > model.config.max_len:
        raise ConfigError(f"a cache of {length} positions is invalid; accepted: at most max_len="
                          f"{model.config.max_len}")
    tokens_BxS = jnp.zeros((batch_size, length), jnp.int32)
    # Only the cache is returned, so under jit the parameter initialisers are never computed.
    return jax.jit(lambda: model.init(jax.random.key(0), tokens_BxS, decode=True)[CACHE])()


def decode_step(model: AeroLM, variables, cache, tokens_BxT: jnp.ndarray, positions_BxT: jnp.ndarray, *,
                last_only: bool = False):
    """(logits [B, T, V], or [B, 1, V] of the last token with `last_only`; updated cache): the next T tokens of
    every row appended to the cache.

    Outside jit, a step past the cache's end or a position past max_len is refused (inside, generate's
    own checks guarantee neither happens).
    """
    _check_room(cache, tokens_BxT.shape[-1], positions_BxT, model.config.max_len)
    logits_BxTxV, updated = model.apply({**variables, CACHE: cache}, tokens_BxT, positions_BxT=positions_BxT,
                                        decode=True, last_only=last_only, mutable=[CACHE])
    return logits_BxTxV, updated[CACHE]


def _check_room(cache, count: int, positions_BxT, max_len: int) -> None:
    """One clear error for tokens that would not fit the cache, or positions without an embedding."""
    try:
        next_slot, length = int(cache["next_slot"]), cache["positions"].shape[-1]
        last = int(jnp.max(positions_BxT))
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller checked before tracing
    if next_slot + count > length:
        raise ConfigError(f"{count} more tokens at slot {next_slot} overflow a cache of {length}; accepted: at most "
                          f"{length - next_slot} (init_cache with a longer length)")
    if last >= max_len:
        raise ConfigError(f"position {last} is invalid; accepted: positions below max_len={max_len}")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eot_id"))
def _generate(variables, tokens_BxP, positions_BxP, rng, *, model: AeroLM, max_new_tokens: int,
              sampling: Sampling, eot_id: Optional[int]):
    """The jitted loop: read the prompts, then choose and feed one token at a time until done."""
    B, P = tokens_BxP.shape
    cache = init_cache(model, B, P + max_new_tokens - 1)  # the last token is chosen, never fed
    logits_Bx1xV, cache = decode_step(model, variables, cache, tokens_BxP, positions_BxP, last_only=True)
    first_B = choose(logits_Bx1xV[:, -1], jax.random.fold_in(rng, 0), sampling)
    stop = -1 if eot_id is None else eot_id
    out_BxN = jnp.full((B, max_new_tokens), stop, jnp.int32).at[:, 0].set(first_B)

    def unfinished(carry):
        i, _, _, _, _, done_B = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def next_token(carry):
        i, cache, out_BxN, last_B, position_B, done_B = carry
        logits_Bx1xV, cache = decode_step(model, variables, cache, last_B[:, None], position_B[:, None])
        token_B = jnp.where(done_B, stop, choose(logits_Bx1xV[:, 0], jax.random.fold_in(rng, i), sampling))
        return i + 1, cache, out_BxN.at[:, i].set(token_B), token_B, position_B + 1, done_B | (token_B == stop)

    carry = (jnp.int32(1), cache, out_BxN, first_B, positions_BxP[:, -1] + 1, first_B == stop)
    return jax.lax.while_loop(unfinished, next_token, carry)[2]


def generate(model: AeroLM, variables, prompt_tokens: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng: Optional[jax.Array] = None,
             eot_id: Optional[int] = None) -> np.ndarray:
    """Continue each prompt by up to `max_new_tokens` tokens: int32 [B, max_new_tokens].

    `variables` is the model's variable dict (params and, e.g., spectral or ln_calibration state);
    `prompt_tokens` a list of token-id lists, of any lengths. A row stops at `eot_id` (when given) and is
    filled with it from there on. The same `rng` gives the same samples.
    """
    sampling = Sampling(float(temperature), top_k, float(top_p))
    check_sampling(sampling)
    sampling = sampling._replace(top_k=int(top_k))  # hashable and exact: the jitted loop is compiled per setting
    prompts = _checked_prompts(prompt_tokens, model.config.vocab_size)
    longest = max(len(p) for p in prompts)
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} is invalid; accepted: an integer >= 1")
    if longest + max_new_tokens > model.config.max_len:
        raise ConfigError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} is "
                          f"{longest + max_new_tokens} positions; accepted: at most max_len={model.config.max_len} "
                          f"(shorten the prompt or ask for at most {max(model.config.max_len - longest, 0)} tokens)")
    tokens_BxP, positions_BxP = left_pad(prompts)
    rng = jax.random.key(0) if rng is None else rng
    out_BxN = _generate(variables, tokens_BxP, positions_BxP, rng, model=model, max_new_tokens=int(max_new_tokens),
                        sampling=sampling, eot_id=eot_id)
    return np.asarray(out_BxN)


def _checked_prompts(prompt_tokens, vocab_size: int) -> List[np.ndarray]:
    prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompt_tokens]
    if not prompts:
        raise ConfigError("no prompt given; accepted: a list of at least one prompt of token ids")
    for row, prompt in enumerate(prompts):
        if prompt.size == 0:
            raise ConfigError(f"prompt {row} is empty; accepted: a prompt of at least one token")
        if prompt.min() < 0 or prompt.max() >= vocab_size:
            raise ConfigError(f"prompt {row} has token ids {prompt.min()}..{prompt.max()}; accepted: 0.."
                              f"{vocab_size - 1} (the model's vocabulary)")
    return prompts


def until_stop(tokens_N: np.ndarray, eot_id: Optional[int]) -> np.ndarray:
    """A generated row up to (without) its first end-of-text token."""
    if eot_id is None:
        return tokens_N
    stops = np.flatnonzero(tokens_N == eot_id)
    return tokens_N[:stops[0]] if stops.size else tokens_N


# -- the console command ------------------------------------------------------------------------


def _run(args) -> None:
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    check_sampling(sampling)  # before the checkpoint is read: a typo fails at once
    _check_counts(args)
    run = restore_run(args.workdir, args.step)
    tokenizer = data.make_tokenizer(run.config.data.tokenizer, run.config.data.tokenizer_path or None)
    prompts = [tokenizer.encode(text) for text in args.prompt]
    max_len, longest = run.model.config.max_len, max(len(p) for p in prompts)
    if longest >= max_len:
        raise ConfigError(f"--prompt of {longest} tokens leaves no room to generate; accepted: a prompt of fewer "
                          f"than max_len={max_len} tokens")
    max_new = min(DEFAULT_MAX_NEW_TOKENS, max_len - longest) if args.max_new_tokens is None else args.max_new_tokens
    variables = {"params": run.state.params, **run.state.model_state}
    batch = [p for p in prompts for _ in range(args.num_samples)]
    out_BxN = generate(run.model, variables, batch, max_new_tokens=max_new, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, rng=jax.random.key(args.seed), eot_id=tokenizer.eot_id)
    for row, tokens_N in enumerate(out_BxN):
        prompt_index, sample = divmod(row, args.num_samples)
        continuation = until_stop(tokens_N, tokenizer.eot_id)
        text = tokenizer.decode(continuation)
        stopped = "end_of_text" if continuation.size < tokens_N.size else "max_new_tokens"
        if args.json:
            print(json.dumps({"prompt": args.prompt[prompt_index], "sample": sample, "step": run.step,
                              "continuation": text, "tokens": continuation.tolist(), "stopped": stopped}))
        else:
            print(f"--- prompt {prompt_index}, sample {sample} (step {run.step}, stopped: {stopped})")
            print(args.prompt[prompt_index] + text)


def _check_counts(args) -> None:
    """The command's numbers and prompts, checked before the checkpoint is read."""
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} is invalid; accepted: an integer >= 1 (default: "
                          f"{DEFAULT_MAX_NEW_TOKENS}, or what fits in max_len)")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples} is invalid; accepted: an integer >= 1")
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed {args.seed} is invalid; accepted: an integer in [0, {MAX_SEED}]")
    if any(not p for p in args.prompt):
        raise ConfigError("--prompt '' is empty; accepted: a prompt of at least one character")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="aero-sample", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a run directory written by aero-train")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text to continue; repeat for a batch of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"tokens to generate (default: {DEFAULT_MAX_NEW_TOKENS}, or what fits in max_len)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="keep the most likely tokens up to this mass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    argparse_main("aero-sample", parser, _run, argv)


if __name__ == "__main__":
    main()
