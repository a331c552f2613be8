"""Entropy math against NumPy, and the limits that temperature must reach inside the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aero_jax import entropy, presets
from aero_jax.model import AeroLM, init_variables, logits_and_entropy


def _causal_probs(rng, B=2, H=3, T=6):
    scores = rng.normal(size=(B, H, T, T)) * 3
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def test_entropy_equals_numpy_and_ignores_masked_entries():
    probs = _causal_probs(np.random.default_rng(0))
    expected = np.zeros(probs.shape[:-1])
    for idx in np.ndindex(*probs.shape[:-1]):
        row = probs[idx]
        row = row[row > 0]
        expected[idx] = -np.sum(row * np.log(row + 1e-9))
    got = entropy.attention_entropy(jnp.asarray(probs, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert np.asarray(got)[..., 0] == pytest.approx(0.0, abs=1e-6)  # row 0 sees one key


@pytest.mark.parametrize("temperature, expected_row", [(1e6, "log(i+1)"), (1e-6, "zero")])
def test_temperature_limits_inside_the_model(temperature, expected_row):
    config = presets.model_config("SM(t)+ScFuFFN", size="tiny", temperature_init=temperature)
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    # Scale the query and key kernels up so a tiny temperature meets well-separated scores.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 50 if any(getattr(k, "key", "") in ("query", "key") for k in p) else x, variables)
    tokens = jax.random.randint(jax.random.key(1), (2, config.max_len), 0, config.vocab_size)
    _, entropies_LxBxHxT, _ = logits_and_entropy(model, variables, tokens)
    T = config.max_len
    if expected_row == "log(i+1)":
        target = np.broadcast_to(np.log(np.arange(1, T + 1)), entropies_LxBxHxT.shape)
        np.testing.assert_allclose(np.asarray(entropies_LxBxHxT), target, rtol=1e-4, atol=1e-4)
    else:
        assert float(jnp.max(entropies_LxBxHxT)) < 1e-3


def test_head_entropy_and_range_shares():
    e_LxBxHxT = jnp.asarray(np.random.default_rng(1).uniform(0, 3, size=(3, 2, 4, 5)), jnp.float32)
    matrix = entropy.head_entropy(e_LxBxHxT)
    np.testing.assert_allclose(np.asarray(matrix), np.asarray(e_LxBxHxT).mean(axis=(1, 3)), rtol=1e-6)

    heads = jnp.asarray([[0.0, 0.9, 1.0, 1.5], [2.0, 2.9, 3.5, 4.0]])  # M = 4 observed
    np.testing.assert_allclose(np.asarray(entropy.entropy_range_shares(heads)), [2 / 8, 2 / 8, 2 / 8, 2 / 8])
    shares = entropy.entropy_range_shares(heads, max_reference="log_t", seq_len=16)  # M = log 16 = 2.77
    # Edges 0.69, 1.39, 2.08; heads above M = log 16 count in the top range.
    np.testing.assert_allclose(np.asarray(shares), [1 / 8, 2 / 8, 2 / 8, 3 / 8])


def test_strengths_are_normalised_per_layer():
    s = entropy.head_strengths(jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32))
    np.testing.assert_allclose(np.asarray(s).sum(-1), [4.0, 4.0, 4.0], rtol=1e-6)
    assert float(jnp.min(s)) > 0
