"""The EReg penalty against an independent NumPy implementation of both readings."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aero_jax import entropy, presets
from aero_jax.model import THRESHOLDS, AeroLM, init_variables, logits_and_entropy, split_variables
from aero_jax.objective import lm_loss


def numpy_penalty(e_LxBxHxT, theta_LxH, gamma, seq_len, reduction, strengths=None):
    """Written from the method file's section 8, loop by loop."""
    L, B, H, T = e_LxBxHxT.shape
    e_max = np.log(seq_len)
    tol = gamma * e_max
    layer_means = []
    for l in range(L):
        head_values = []
        for h in range(H):
            target = theta_LxH[l, h] * e_max
            if reduction == "per_position_sum":
                total = 0.0
                for b in range(B):
                    for t in range(T):
                        delta = e_LxBxHxT[l, b, h, t] - target
                        total += delta**2 if abs(delta) > tol else 0.0
            else:
                delta = e_LxBxHxT[l, :, h, :].mean() - target
                total = delta**2 if abs(delta) > tol else 0.0
            weight = 1.0 if strengths is None else strengths[l, h]
            head_values.append(weight * total)
        layer_means.append(np.mean(head_values))
    return np.mean(layer_means)


@pytest.mark.parametrize("reduction", ["per_position_sum", "head_mean"])
@pytest.mark.parametrize("with_strengths", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalty_matches_numpy(reduction, with_strengths, seed):
    r = np.random.default_rng(seed)
    L, B, H, T = 3, 2, 4, 16
    e = r.uniform(0, np.log(T), size=(L, B, H, T)).astype(np.float32)
    theta = r.uniform(0.1, 0.9, size=(L, H)).astype(np.float32)
    strengths = r.uniform(0.2, 2, size=(L, H)).astype(np.float32) if with_strengths else None
    gamma = 0.15
    got = entropy.penalty(jnp.asarray(e), jnp.asarray(theta), gamma=gamma, seq_len=T, reduction=reduction,
                          strengths_LxH=None if strengths is None else jnp.asarray(strengths))
    expected = numpy_penalty(e, theta, gamma, T, reduction, strengths)
    assert expected > 0
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["per_position_sum", "head_mean"])
def test_penalty_is_zero_within_tolerance(reduction):
    T = 32
    theta = jnp.full((2, 3), 0.5)
    e_max = np.log(T)
    offsets = np.random.default_rng(0).uniform(-0.19, 0.19, size=(2, 4, 3, T)) * e_max
    e = jnp.asarray(0.5 * e_max + offsets, jnp.float32)
    assert float(entropy.penalty(e, theta, gamma=0.2, seq_len=T, reduction=reduction)) == 0.0
    assert float(entropy.penalty(e, theta, gamma=0.0, seq_len=T, reduction=reduction)) > 0.0


def test_gradient_reaches_thresholds_and_attention_logits():
    config = presets.model_config("EReg(SM+LN+G)", size="tiny", ereg_weight=1.0, ereg_gamma=0.0)
    model = AeroLM(config)
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    tokens = jax.random.randint(jax.random.key(1), (2, config.max_len), 0, config.vocab_size)

    def penalty_only(p):
        _, (metrics, _) = lm_loss(p, state, tokens, model=model)
        return metrics["penalty"]

    grads = jax.grad(penalty_only)(params)
    assert float(jnp.min(jnp.abs(grads[THRESHOLDS]))) > 0
    for layer in range(config.num_layers):
        for proj in ("query", "key"):  # the attention logits are q . k
            assert float(jnp.max(jnp.abs(grads[f"block_{layer}"]["attn"][proj]["kernel"]))) > 0


def test_penalty_gradient_with_respect_to_scores():
    """Through softmax and entropy, the penalty's gradient reaches the raw attention scores."""
    T = 8
    scores = jnp.asarray(np.random.default_rng(3).normal(size=(1, 1, 2, T, T)), jnp.float32)
    mask = jnp.tril(jnp.ones((T, T), bool))

    def f(s):
        probs = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
        return entropy.penalty(entropy.attention_entropy(probs), jnp.full((1, 2), 0.9), gamma=0.0, seq_len=T)

    g = np.asarray(jax.grad(f)(scores))
    assert np.abs(g[..., 1:, :]).max() > 0
    assert np.all(g[..., ~np.tril(np.ones((T, T), bool))] == 0)  # masked scores get no gradient


def test_lambda_zero_reproduces_the_plain_loss():
    base = presets.model_config("SM+LN+G", size="tiny")
    reg = presets.model_config("EReg(SM+LN+G)", size="tiny", ereg_weight=0.0)
    tokens = jax.random.randint(jax.random.key(1), (2, base.max_len), 0, base.vocab_size)
    losses = []
    for config in (base, reg):
        model = AeroLM(config)
        params, state = split_variables(init_variables(model, jax.random.key(0)))
        losses.append(float(lm_loss(params, state, tokens, model=model)[0]))
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_gradient_accumulation_keeps_the_penalty_strength():
    """Two microbatches give the full batch's penalty and gradients (per_position_sum sums over rows)."""
    from aero_jax.train_step import _accumulated_grads

    config = presets.model_config("EReg(SM+LN+G)", size="tiny", ereg_weight=1e-2)
    model = AeroLM(config)
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    tokens = jax.random.randint(jax.random.key(1), (4, config.max_len), 0, config.vocab_size)
    full_grads, full, _ = _accumulated_grads(params, state, tokens, model, 1)
    acc_grads, acc, _ = _accumulated_grads(params, state, tokens, model, 2)
    np.testing.assert_allclose(float(acc["penalty"]), float(full["penalty"]), rtol=1e-5)
    np.testing.assert_allclose(float(acc["loss"]), float(full["loss"]), rtol=1e-5)
    for a, f in zip(jax.tree_util.tree_leaves(acc_grads), jax.tree_util.tree_leaves(full_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(f), rtol=1e-3, atol=1e-6)


# -- the penalty's strength does not depend on how the batch is laid out --------------------------

def _ereg_setup(batch=8):
    config = presets.model_config("EReg(SM(t)+ScFuFFN)", size="tiny", num_layers=2, max_len=16, ereg_weight=0.1,
                                  ereg_gamma=0.0)
    model = AeroLM(config)
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    tokens = jax.random.randint(jax.random.key(1), (batch, 16), 0, config.vocab_size)
    return model, params, state, tokens


def test_ereg_rows_sets_the_strength_whatever_the_accumulation():
    from aero_jax.train_step import _accumulated_grads

    model, params, state, tokens = _ereg_setup()
    results = {a: jax.jit(lambda p, s, t, a=a: _accumulated_grads(p, s, t, model, a))(params, state, tokens)
               for a in (1, 2, 4)}
    for a in (2, 4):
        np.testing.assert_allclose(results[a][1]["loss"], results[1][1]["loss"], rtol=1e-5)
        np.testing.assert_allclose(results[a][1]["penalty"], results[1][1]["penalty"], rtol=1e-5)
        for g, g1 in zip(jax.tree_util.tree_leaves(results[a][0]), jax.tree_util.tree_leaves(results[1][0])):
            np.testing.assert_allclose(g, g1, rtol=1e-4, atol=1e-6)  # entries near 0 carry float noise


def test_ereg_rows_makes_the_penalty_a_per_row_mean_times_the_rows():
    model, params, state, tokens = _ereg_setup()
    doubled = jnp.concatenate([tokens, tokens])  # a batch twice as large, same rows: same strength
    (loss, (metrics, _)) = lm_loss(params, state, tokens, model=model)
    (loss2, (metrics2, _)) = lm_loss(params, state, doubled, model=model)
    np.testing.assert_allclose([loss2, metrics2["penalty"]], [loss, metrics["penalty"]], rtol=1e-5)
    _, entropies, _ = logits_and_entropy(model, {"params": params, **state}, tokens)
    raw_sum = entropy.penalty(entropies, params[THRESHOLDS], gamma=0.0, seq_len=16)
    np.testing.assert_allclose(metrics["penalty"], raw_sum * model.config.ereg_rows / tokens.shape[0], rtol=1e-5)


_EIGHT_DEVICES = """
import json, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import test_penalty
from aero_jax.train_step import _accumulated_grads
model, params, state, tokens = test_penalty._ereg_setup(batch=16)
step = lambda p, s, t: _accumulated_grads(p, s, t, model, 2)
one = jax.jit(lambda p, s, t: _accumulated_grads(p, s, t, model, 1))(params, state, tokens)  # 1 device, no split
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = jax.jit(step, in_shardings=(None, None, NamedSharding(mesh, PartitionSpec("data"))))(params, state, tokens)
def largest_difference(part):
    pairs = [(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree_util.tree_leaves(one[part]), jax.tree_util.tree_leaves(sharded[part]))]
    scale = max(float(np.max(np.abs(a))) for a, _ in pairs)  # e.g. the key bias's gradient is 0 up to noise
    return max(float(np.max(np.abs(a - b))) for a, b in pairs) / scale
print("RESULT", json.dumps({"devices": len(jax.devices()), "gradients": largest_difference(0),
                            "loss": [float(one[1]["loss"]), float(sharded[1]["loss"])],
                            "penalty": [float(one[1]["penalty"]), float(sharded[1]["penalty"])]}))
"""


@pytest.mark.slow
def test_ereg_strength_is_the_same_on_eight_devices():
    import json
    import os
    import pathlib
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(pathlib.Path(__file__).parent)}
    result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT ")[-1])
    assert report["devices"] == 8 and report["gradients"] < 1e-4
    np.testing.assert_allclose(*report["loss"], rtol=1e-5)
    np.testing.assert_allclose(*report["penalty"], rtol=1e-5)
