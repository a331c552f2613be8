"""Generation: cached decoding against full passes for every preset, the sampling filters, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line, run_script, small_config

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.data import ByteTokenizer
from aero_jax.export.parity import moved_model
from aero_jax.model import AeroLM
from aero_jax.sample import (Sampling, choose, decode_step, generate, init_cache, left_pad, top_k_keep, top_p_keep,
                             until_stop)

TINY = dict(size="tiny", num_layers=2, max_len=12)
PROMPT = 4  # tokens read in the first cached call; the rest are fed one at a time
DEFAULT = "EReg(SM(t)+ScFuFFN)"
# Every preset decodes as its full pass (the slow suite); the default suite takes one of each mechanism:
# LayerNorm, activations, learnable slopes, fused and pruned FFNs, temperatures, weight and spectral norm, EReg.
REPRESENTATIVE = ("SM+LN+G", "SM+LN+R", "SM+R", "SM", "SM+LReLU(learnable per layer)", "SM+ScFuFFN[FFN:L/2]",
                  "SM(t)+ScFuFFN", "SM+WNorm(QK+FFN)", "SM+SNorm(QK+FFN)", DEFAULT)
EVERY_PRESET = [name if name in REPRESENTATIVE else pytest.param(name, marks=pytest.mark.slow)
                for name in presets.names()]


def _variables(name, **overrides):
    model, params, state = moved_model(name, **{**TINY, **overrides})
    return model, {"params": params, **state}


def _cached_logits(model: AeroLM, variables, tokens_BxT, positions_BxT, first: int):
    """Logits of every position, computed through the cache: `first` tokens at once, then one by one."""
    B, T = tokens_BxT.shape
    cache = init_cache(model, B, T)
    logits, cache = decode_step(model, variables, cache, tokens_BxT[:, :first], positions_BxT[:, :first])
    pieces = [logits]
    for i in range(first, T):
        logits, cache = decode_step(model, variables, cache, tokens_BxT[:, i:i + 1], positions_BxT[:, i:i + 1])
        pieces.append(logits)
    return jnp.concatenate(pieces, axis=1)


@pytest.mark.parametrize("name", EVERY_PRESET)
def test_cached_decoding_gives_the_logits_of_a_full_pass_at_every_position(name):
    model, variables = _variables(name)
    T = model.config.max_len
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, model.config.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (2, T))
    full = model.apply(variables, tokens)
    cached = _cached_logits(model, variables, tokens, positions, PROMPT)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [DEFAULT, "SM+LN+G", pytest.param("SM+SNorm(QK+FFN)", marks=pytest.mark.slow)])
def test_left_padded_prompts_give_the_logits_of_each_prompt_alone(name):
    """Padding takes position -1: every real token keeps its absolute position and sees no padding."""
    model, variables = _variables(name)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, n) for n in (9, 3, 6)]
    tokens, positions = left_pad(prompts)
    assert positions.tolist()[1] == [-1] * 6 + [0, 1, 2]
    cached = _cached_logits(model, variables, jnp.asarray(tokens), jnp.asarray(positions), first=2)
    for row, prompt in enumerate(prompts):
        alone = model.apply(variables, jnp.asarray(prompt)[None])
        np.testing.assert_allclose(np.asarray(cached[row, -len(prompt):]), np.asarray(alone[0]), atol=1e-4, rtol=1e-4)


def test_decoding_past_the_cache_or_max_len_is_refused():
    model, variables = _variables("SM+LN+G")
    cache = init_cache(model, 1, 4)
    _, cache = decode_step(model, variables, cache, jnp.zeros((1, 3), jnp.int32), jnp.arange(3)[None])
    with pytest.raises(ConfigError, match="2 more tokens at slot 3 overflow a cache of 4; accepted: at most 1"):
        decode_step(model, variables, cache, jnp.zeros((1, 2), jnp.int32), jnp.arange(3, 5)[None])
    with pytest.raises(ConfigError, match="position 12 is invalid; accepted: positions below max_len=12"):
        decode_step(model, variables, cache, jnp.zeros((1, 1), jnp.int32), jnp.full((1, 1), 12))


def test_the_frozen_layernorm_substitute_decodes_like_its_full_pass():
    model, variables = _variables("SM+LN+R", ln_frozen=True)
    variables = {**variables, "ln_calibration": jax.tree_util.tree_map(
        lambda std: std * 1.7, variables["ln_calibration"])}
    T = model.config.max_len
    tokens = jax.random.randint(jax.random.key(2), (1, T), 0, model.config.vocab_size)
    cached = _cached_logits(model, variables, tokens, jnp.arange(T)[None], PROMPT)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(model.apply(variables, tokens)), atol=1e-4, rtol=1e-4)


def _argmax_chain(model, variables, prompt, steps):
    """Greedy continuation by a full forward pass over the whole sequence for every new token."""
    sequence = list(prompt)
    for _ in range(steps):
        logits = model.apply(variables, jnp.asarray(sequence)[None])
        sequence.append(int(jnp.argmax(logits[0, -1])))
    return sequence[len(prompt):]


def test_greedy_generation_is_the_argmax_chain_of_full_passes():
    model, variables = _variables("EReg(SM(t)+ScFuFFN)")
    prompts = [[5, 9, 200, 31, 7], [64, 65]]
    out = generate(model, variables, prompts, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 6) and out.dtype == np.int32
    for row, prompt in enumerate(prompts):
        assert out[row].tolist() == _argmax_chain(model, variables, prompt, 6)


def test_a_row_stops_at_end_of_text_and_is_filled_with_it():
    model, variables = _variables("SM+LN+G")
    prompts = [[5, 9, 200], [64, 65, 66]]
    free = generate(model, variables, prompts, max_new_tokens=6, temperature=0)
    eot = int(free[0, 1])  # pretend the second greedy token of row 0 ends the text
    stopped = generate(model, variables, prompts, max_new_tokens=6, temperature=0, eot_id=eot)
    for row in range(2):
        ends = list(free[row]).index(eot) if eot in free[row] else 6
        assert stopped[row].tolist() == free[row, :ends].tolist() + [eot] * (6 - ends)
        assert until_stop(stopped[row], eot).tolist() == free[row, :ends].tolist()


def test_a_seed_reproduces_a_sample_and_another_seed_changes_it():
    model, variables = _variables("EReg(SM(t)+ScFuFFN)")
    sample = lambda seed, **kw: generate(model, variables, [[1, 2, 3]] * 2, max_new_tokens=8, temperature=1.5,
                                         rng=jax.random.key(seed), **kw)
    first = sample(3)
    assert (sample(3) == first).all()
    assert not (sample(4) == first).all()
    assert not (first[0] == first[1]).all()  # each row draws its own tokens
    greedy = generate(model, variables, [[1, 2, 3]], max_new_tokens=8, temperature=0)
    assert (sample(5, top_k=1) == greedy).all()  # only the most likely token survives the filter
    assert (sample(6, top_p=1e-6) == greedy).all()


LOGITS = jnp.array([[1.0, 3.0, 3.0, 2.0, 0.0]])


@pytest.mark.parametrize("k, kept", [(1, {1, 2}), (2, {1, 2}), (3, {1, 2, 3}), (4, {0, 1, 2, 3}),
                                     (0, {0, 1, 2, 3, 4}), (9, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_most_likely_tokens_and_their_ties(k, kept):
    assert set(np.flatnonzero(np.asarray(top_k_keep(LOGITS, k))[0])) == kept


PROBABILITIES = jnp.log(jnp.array([[0.125, 0.5, 0.125, 0.25]]))


@pytest.mark.parametrize("p, kept", [(0.3, {1}), (0.5, {1}), (0.6, {1, 3}), (0.74, {1, 3}), (0.76, {0, 1, 2, 3}),
                                     (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_fewest_tokens_reaching_p_and_their_ties(p, kept):
    assert set(np.flatnonzero(np.asarray(top_p_keep(PROBABILITIES, p))[0])) == kept


def test_top_p_applies_to_what_top_k_kept_renormalised():
    """Of 0.4, 0.3, 0.2, 0.1, top-k 2 leaves 0.57 and 0.43: a nucleus of 0.5 is then the first token alone."""
    logits = jnp.log(jnp.tile(jnp.array([[0.4, 0.3, 0.2, 0.1]]), (256, 1)))
    chosen = choose(logits, jax.random.key(0), Sampling(temperature=1.0, top_k=2, top_p=0.5))
    assert (chosen == 0).all()
    assert set(np.asarray(choose(logits, jax.random.key(0), Sampling(temperature=1.0, top_k=2)))) == {0, 1}


@pytest.mark.parametrize("prompts, settings, message", [
    ([], {}, "no prompt given"),
    ([[1, 2], []], {}, "prompt 1 is empty"),
    ([[1, 300]], {}, "token ids 1..300; accepted: 0..256"),
    ([[1] * 10], {"max_new_tokens": 3}, "10 tokens plus max_new_tokens=3 is 13 positions; accepted: at most "
                                        "max_len=12"),
    ([[1]], {"max_new_tokens": 0}, "max_new_tokens=0 is invalid"),
    ([[1]], {"temperature": -0.5}, "temperature=-0.5 is invalid; accepted: a number >= 0"),
    ([[1]], {"temperature": float("nan")}, "temperature=nan is invalid"),
    ([[1]], {"top_k": -1}, "top_k=-1 is invalid; accepted: an integer >= 0"),
    ([[1]], {"top_k": 2.5}, "top_k=2.5 is invalid"),
    ([[1]], {"top_p": 0.0}, "top_p=0.0 is invalid; accepted: a number in (0, 1]"),
    ([[1]], {"top_p": 1.5}, "top_p=1.5 is invalid"),
])
def test_bad_generation_requests_are_refused_by_name(prompts, settings, message):
    model, variables = _variables("SM+LN+G")
    with pytest.raises(ConfigError, match=None) as error:
        generate(model, variables, prompts, **{"max_new_tokens": 2, **settings})
    assert message in str(error.value)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A tiny EReg(SM(t)+ScFuFFN) run on bytes (max_len 32), checkpoints at steps 4 and 8."""
    from aero_jax.trainer import train

    workdir = tmp_path_factory.mktemp("sample_run")
    train(small_config(corpus), str(workdir))
    return workdir


@pytest.mark.slow
def test_aero_sample_prints_continuations_that_a_seed_reproduces(trained):
    args = ("--workdir", trained, "--prompt", "def f(x):", "--prompt", "import", "--max-new-tokens", 12,
            "--temperature", 0.9, "--top-k", 40, "--top-p", 0.95, "--num-samples", 2, "--seed", 7, "--json")
    first = run_script("aero-sample", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    samples = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(s["prompt"], s["sample"]) for s in samples] == [("def f(x):", 0), ("def f(x):", 1), ("import", 0),
                                                              ("import", 1)]
    for s in samples:
        assert s["step"] == 8 and s["stopped"] in ("end_of_text", "max_new_tokens")
        assert 0 < len(s["tokens"]) <= 12 or s["stopped"] == "end_of_text"
        assert s["continuation"] == ByteTokenizer().decode(s["tokens"])
    assert run_script("aero-sample", *args).stdout == first.stdout
    text = run_script("aero-sample", "--workdir", trained, "--prompt", "def f(x):", "--temperature", 0, "--step", 4)
    assert text.returncode == 0 and text.stdout.startswith("--- prompt 0, sample 0 (step 4, stopped: "), text.stderr
    assert text.stdout.splitlines()[1].startswith("def f(x):")
    greedy = generate(*_restored(trained, step=4), [ByteTokenizer().encode("def f(x):")], max_new_tokens=23,
                      temperature=0, eot_id=ByteTokenizer().eot_id)  # the default: what fits in max_len 32
    assert text.stdout.split("\n", 1)[1] == "def f(x):" + ByteTokenizer().decode(until_stop(greedy[0], 256)) + "\n"


def _restored(workdir, step):
    from aero_jax.evaluate import restore_run

    run = restore_run(str(workdir), step)
    return run.model, {"params": run.state.params, **run.state.model_state}


@pytest.mark.slow
def test_bad_sampling_requests_are_refused_in_one_line(trained, tmp_path):
    def refused(*args, expected, workdir=trained):
        assert_one_line(run_script("aero-sample", "--workdir", workdir, *args), "aero-sample", 2, *expected)

    # The sampling settings are checked by check_sampling, in process for every setting (above), here once.
    refused("--prompt", "x", "--top-p", "0", expected=["top_p=0.0 is invalid", "(0, 1]"])
    refused("--prompt", "", expected=["--prompt '' is empty"])
    refused("--prompt", "y" * 40, expected=["--prompt of 40 tokens leaves no room", "fewer than max_len=32"])
    refused("--prompt", "x", "--max-new-tokens", "40", expected=["max_new_tokens=40", "ask for at most 31 tokens"])
    refused("--prompt", "x", "--step", "5", expected=["step 5 has no checkpoint", "accepted: 4, 8"])
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    refused("--prompt", "x", workdir=no_checkpoint, expected=["has no config.json"])
    (no_checkpoint / "config.json").write_bytes((trained / "config.json").read_bytes())
    refused("--prompt", "x", workdir=no_checkpoint, expected=["has no checkpoint"])


@pytest.mark.slow  # five console-script runs: about 15 s
def test_steps_counts_and_seeds_out_of_range_are_refused_in_one_line(trained):
    def refused(*args, expected):
        assert_one_line(run_script("aero-sample", "--workdir", trained, "--prompt", *args), "aero-sample", 2, *expected)

    refused("x", "--step", "0", expected=["step 0 has no checkpoint", "accepted: 4, 8"])  # 0 is a step, not "newest"
    for count in ("0", "-3"):
        refused("x", "--max-new-tokens", count, expected=[f"--max-new-tokens {count} is invalid", "an integer >= 1"])
    refused("z" * 100_000, "--max-new-tokens", "5", expected=["--prompt of 100000 tokens leaves no room"])
    refused("x", "--seed", "99999999999999999999", expected=["--seed 99999999999999999999 is invalid",
                                                             "[0, 4294967295]"])


def test_the_prompt_pass_computes_only_the_last_logits():
    """Same last-token logits as the full pass; at batch 8, prompt 1,024, vocabulary 52k the compiled pass
    returns 1.7 GB less (its [B, T, V] logits)."""
    model, params, state = moved_model("EReg(SM(t)+ScFuFFN)", size="tiny", vocab_size=257, max_len=32)
    variables = {"params": params, **state}
    tokens_BxP, positions_BxP = left_pad([[5, 6, 7, 8], [9, 10]])
    full, _ = decode_step(model, variables, init_cache(model, 2, 4), tokens_BxP, positions_BxP)
    last, _ = decode_step(model, variables, init_cache(model, 2, 4), tokens_BxP, positions_BxP, last_only=True)
    assert last.shape == (2, 1, 257)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6, rtol=0)

    big = AeroLM(presets.model_config("SM+LN+G", size="tiny", vocab_size=52000, max_len=1024))
    big_variables = {"params": jax.eval_shape(lambda: big.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))[
        "params"]}
    cache = jax.eval_shape(lambda: init_cache(big, 8, 1024))
    tokens = jax.ShapeDtypeStruct((8, 1024), jnp.int32)

    def returned_bytes(last_only):
        step = jax.jit(lambda v, c, t, p: decode_step(big, v, c, t, p, last_only=last_only)[0])
        return step.lower(big_variables, cache, tokens, tokens).compile().memory_analysis().output_size_in_bytes

    assert returned_bytes(False) - returned_bytes(True) >= 1.6e9
