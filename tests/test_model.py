"""Model invariants at tiny sizes: causality, finiteness, the AERO blocks' algebra, parameter count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aero_jax import presets
from aero_jax.config import ModelConfig
from aero_jax.layers import Linear
from aero_jax.model import (TEMPERATURE_FLOOR, THRESHOLDS, AeroLM, Block, FeedForward, count_params, init_variables,
                            logits_and_entropy, split_variables, temperatures)
from aero_jax.objective import lm_loss

TINY = dict(size="tiny", num_layers=2, max_len=16)


def _tokens(config, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, config.max_len), 0, config.vocab_size)


@pytest.mark.parametrize("name", presets.names())
def test_causality(name):
    """Changing token j leaves every logit before position j unchanged."""
    config = presets.model_config(name, **TINY)
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    tokens = _tokens(config)
    j = config.max_len // 2
    changed = tokens.at[:, j].set((tokens[:, j] + 1) % config.vocab_size)
    apply = jax.jit(model.apply)
    before, after = apply(variables, tokens), apply(variables, changed)
    np.testing.assert_array_equal(np.asarray(before[:, :j]), np.asarray(after[:, :j]))
    assert not np.array_equal(np.asarray(before[:, j:]), np.asarray(after[:, j:]))


@pytest.mark.parametrize("name", presets.names())
def test_one_training_pass_is_finite(name):
    config = presets.model_config(name, **TINY)
    model = AeroLM(config)
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    grad_fn = jax.jit(jax.value_and_grad(functools.partial(lm_loss, model=model), has_aux=True))
    (loss, (metrics, _)), grads = grad_fn(params, state, _tokens(config))
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert ("penalty" in metrics) == config.entropy_reg


def test_gpt2_small_parameter_count():
    """Hugging Face GPT-2's 124,439,808 with every bias; the released blocks train only the QK biases."""
    gpt2 = presets.model_config("SM+LN+G", vocab_size=50257, max_len=1024, bias_groups=("qk", "v", "o", "ffn"))
    released = presets.model_config("SM+LN+G", vocab_size=50257, max_len=1024)
    count = {c: count_params(jax.eval_shape(lambda: init_variables(AeroLM(c), jax.random.key(0)))["params"])
             for c in (gpt2, released)}
    assert count[gpt2] == 124_439_808
    assert count[gpt2] - count[released] == 12 * (768 + 768 + 3072 + 768)  # V, O, FFN in and out biases


def test_released_blocks_initialise_without_residual_scaling():
    for scaling, expected_std in ((False, 0.02), (True, 0.02 / np.sqrt(2 * 12))):
        config = presets.model_config("SM+LN+G", num_layers=12, num_heads=4, d_model=64, d_ff=256, vocab_size=50,
                                      max_len=8, residual_init_scaling=scaling)
        kernel = init_variables(AeroLM(config), jax.random.key(0))["params"]["block_0"]["attn"]["out"]["kernel"]
        assert abs(float(np.std(kernel)) - expected_std) < 0.1 * expected_std


def test_fused_qk_equals_separate_q_and_k():
    separate = presets.model_config("SM+LN+G", **TINY)
    fused = separate.replace(qk_fused=True)
    variables = init_variables(AeroLM(separate), jax.random.key(0))
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    attn = params["block_0"]["attn"]
    query, key = attn.pop("query"), attn.pop("key")
    attn["qk"] = {name: jnp.concatenate([query[name], key[name]], axis=-1) for name in query}
    for block in range(1, separate.num_layers):
        a = params[f"block_{block}"]["attn"]
        q, k = a.pop("query"), a.pop("key")
        a["qk"] = {name: jnp.concatenate([q[name], k[name]], axis=-1) for name in q}
    tokens = _tokens(separate)
    np.testing.assert_allclose(AeroLM(fused).apply({"params": params}, tokens),
                               AeroLM(separate).apply(variables, tokens), atol=1e-5)


def test_joint_spectral_norm_divides_by_the_sigma_of_q_and_k_together():
    config = presets.model_config("SM+SNorm(QK)", **TINY, qk_fused=True)
    variables = init_variables(AeroLM(config), jax.random.key(0))
    assert variables["params"]["block_0"]["attn"]["qk"]["kernel"].shape == (config.d_model, 2 * config.d_model)
    assert variables["spectral"]["block_0"]["attn"]["qk"]["u"].shape == (2 * config.d_model,)


@pytest.mark.parametrize("form, approximate", [("exact", False), ("tanh", True)])
def test_gelu_form(form, approximate):
    config = presets.model_config("SM+LN+G", **TINY, gelu_form=form)
    ffn = FeedForward(config)
    h = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(ffn._activate(h, None), jax.nn.gelu(h, approximate=approximate), atol=1e-7)


def test_raw_temperature_is_learned_directly_and_kept_positive():
    config = presets.model_config("SM(t)+ScFuFFN", **TINY, temperature_param="raw")
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    raw = params["block_0"]["attn"]["temperature"]
    np.testing.assert_allclose(raw, 1e-2)
    np.testing.assert_allclose(temperatures({"temperature": -raw}, config), TEMPERATURE_FLOOR)


def test_logits_and_entropy_shapes_and_sow_switch():
    config = presets.model_config("EReg(SM(t)+ScFuFFN)", **TINY)
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    logits, entropies, _ = logits_and_entropy(model, variables, _tokens(config, batch=3))
    assert logits.shape == (3, config.max_len, config.vocab_size) and logits.dtype == jnp.float32
    assert entropies.shape == (config.num_layers, 3, config.num_heads, config.max_len)
    assert variables["params"][THRESHOLDS].shape == (config.num_layers, config.num_heads)

    quiet = AeroLM(config.replace(sow_entropy=False, entropy_reg=False))
    _, none, _ = logits_and_entropy(quiet, {"params": {k: v for k, v in variables["params"].items()
                                                       if k != THRESHOLDS}}, _tokens(config, batch=3))
    assert none is None


def test_fused_ffn_equals_unfused_identity_ffn():
    c = ModelConfig(num_layers=2, num_heads=2, d_model=8, d_ff=32, vocab_size=11, max_len=4, activation="identity")
    x = jax.random.normal(jax.random.key(0), (2, 4, 8))
    unfused = FeedForward(c)
    p = unfused.init(jax.random.key(1), x, train=False)["params"]
    p = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), p)
    w_in, b_in, w_out, b_out = p["fc_in"]["kernel"], p["fc_in"]["bias"], p["fc_out"]["kernel"], p["fc_out"]["bias"]
    fused_params = {"fused": {"kernel": w_in @ w_out, "bias": b_in @ w_out + b_out}}
    fused = FeedForward(c.replace(ffn_fused=True))
    np.testing.assert_allclose(np.asarray(fused.apply({"params": fused_params}, x, train=False)),
                               np.asarray(unfused.apply({"params": p}, x, train=False)), rtol=1e-5, atol=1e-5)


def test_scaled_ffn_block_formula():
    c = ModelConfig(num_layers=1, num_heads=2, d_model=8, d_ff=8, vocab_size=11, max_len=4,
                    ln_attn=False, ln_ffn=False, ln_final=False, activation="identity", ffn_fused=True,
                    ffn_scaling=True, ffn_alpha_init=4.0, ffn_beta_init=0.5)
    x = jax.random.normal(jax.random.key(0), (1, 4, 8))
    block = Block(c, 0)
    p = block.init(jax.random.key(1), x, train=False)["params"]
    out = block.apply({"params": p}, x, train=False)
    attn = Block(c.replace(ffn_layers=()), 0).apply({"params": {"attn": p["attn"]}}, x, train=False)
    ffn = FeedForward(c).apply({"params": p["ffn"]}, attn, train=False)
    np.testing.assert_allclose(np.asarray(out), np.asarray(0.5 * attn + ffn / 4.0), rtol=1e-5, atol=1e-6)


def test_pruned_layers_have_no_ffn():
    config = presets.model_config("SM+ScFuFFN[FFN:L/2]", size="tiny", num_layers=4)
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    assert [("ffn" in params[f"block_{l}"]) for l in range(4)] == [True, True, False, False]


def test_weight_normalized_columns_have_the_gain_as_norm():
    layer = Linear(6, norm="weight")
    x = jnp.ones((3, 5))
    p = layer.init(jax.random.key(0), x)["params"]
    p = dict(p, kernel=p["kernel"] * 7.0, scale=jnp.arange(1.0, 7.0))
    effective = jax.jacfwd(lambda v: layer.apply({"params": p}, v))(jnp.zeros((5,)))  # [out, in]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(effective), axis=1), np.arange(1.0, 7.0), rtol=1e-5)


def test_spectral_norm_top_singular_value_converges_to_one():
    layer = Linear(12, norm="spectral")
    x = jnp.zeros((1, 20))
    variables = layer.init(jax.random.key(0), x)
    variables = {"params": {"kernel": variables["params"]["kernel"] * 9.0, "bias": variables["params"]["bias"]},
                 "spectral": variables["spectral"]}

    def top_singular_value(v):
        effective = jax.jacfwd(lambda z: layer.apply(v, z))(jnp.zeros((20,)))
        return float(np.linalg.svd(np.asarray(effective), compute_uv=False)[0])

    for _ in range(30):
        _, updated = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
        variables = {**variables, **updated}
    assert top_singular_value(variables) == pytest.approx(1.0, rel=1e-4)


def test_bfloat16_compute_keeps_float32_params():
    config = presets.model_config("EReg(SM(t)+ScFuFFN)", **TINY, dtype="bfloat16")
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables["params"])} == {jnp.dtype("float32")}
    logits, entropies, _ = logits_and_entropy(model, variables, _tokens(config))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert bool(jnp.all(jnp.isfinite(entropies)))


def test_temperature_is_positive_by_construction():
    config = presets.model_config("SM(t)+ScFuFFN", **TINY, temperature_init=0.01)
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    log_t = params["block_0"]["attn"]["log_temperature"]
    assert log_t.shape == (config.num_heads, config.max_len)
    np.testing.assert_allclose(np.exp(np.asarray(log_t)), 0.01, rtol=1e-5)


def test_learnable_slopes_global_and_per_layer():
    glob = init_variables(AeroLM(presets.model_config("SM+LReLU(learnable)", **TINY)), jax.random.key(0))
    per = init_variables(AeroLM(presets.model_config("SM+LReLU(learnable per layer)", **TINY)), jax.random.key(0))
    assert "leaky_slope" in glob["params"] and "leaky_slope" not in glob["params"]["block_0"]["ffn"]
    assert all("leaky_slope" in per["params"][f"block_{l}"]["ffn"] for l in range(2))


def test_spectral_state_advances_only_in_training():
    config = presets.model_config("SM+SNorm(QK)", **TINY)
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    tokens = _tokens(config)
    _, _, eval_state = logits_and_entropy(model, variables, tokens, train=False)
    _, _, train_state = logits_and_entropy(model, variables, tokens, train=True)
    u0 = variables["spectral"]["block_0"]["attn"]["query"]["u"]
    np.testing.assert_array_equal(eval_state["spectral"]["block_0"]["attn"]["query"]["u"], u0)
    assert not np.array_equal(train_state["spectral"]["block_0"]["attn"]["query"]["u"], u0)


def test_sequence_longer_than_max_len_is_refused():
    config = presets.model_config("SM", **TINY)
    model = AeroLM(config)
    variables = init_variables(model, jax.random.key(0))
    with pytest.raises(ValueError, match="max_len=16"):
        model.apply(variables, jnp.zeros((1, 17), jnp.int32))


@pytest.mark.parametrize("name, remat", [("EReg(SM(t)+ScFuFFN)", "dots"), ("SM+SNorm(QK+FFN)", "block"),
                                         ("SM+LN+G", "block")])
def test_rematerialised_blocks_give_the_same_loss_gradients_and_state(name, remat):
    """Recomputing in the backward pass changes memory and FLOPs, not the numbers (spectral state included)."""
    config = presets.model_config(name, **TINY)
    outputs = {}
    for policy in ("none", remat):
        model = AeroLM(config.replace(remat=policy))
        params, state = split_variables(init_variables(model, jax.random.key(0)))
        grad_fn = jax.jit(jax.value_and_grad(functools.partial(lm_loss, model=model), has_aux=True))
        outputs[policy] = grad_fn(params, state, _tokens(config))
    for plain, recomputed in zip(jax.tree_util.tree_leaves(outputs["none"]), jax.tree_util.tree_leaves(outputs[remat])):
        np.testing.assert_allclose(np.asarray(recomputed), np.asarray(plain), rtol=1e-5, atol=1e-7)
