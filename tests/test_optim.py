"""The optimizer's weight-decay mask and learning-rate schedules."""

import jax
import numpy as np
import pytest

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.model import AeroLM, init_variables
from aero_jax.optim import decay_mask, learning_rate_schedule


def _decaying_paths(params, **kwargs):
    mask = decay_mask(params, **kwargs)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return {"/".join(k.key for k in path): bool(v) for path, v in flat}


def test_only_matrices_and_embeddings_decay():
    config = presets.model_config("EReg(SM(t)+ScFuFFN)", size="tiny", ereg_head_strengths=True,
                                  weight_norm=("qk",), activation="learnable_leaky_relu", ffn_fused=False)
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    paths = _decaying_paths(params)
    decayed = {p for p, d in paths.items() if d}
    assert decayed == {p for p in paths if p.endswith("/kernel")} | {"wte/embedding", "wpe"}
    for never in ("entropy_thresholds", "entropy_strength_logits", "leaky_slope", "block_0/ffn_alpha",
                  "block_0/ffn_beta", "block_0/attn/log_temperature", "block_0/attn/query/scale",
                  "block_0/attn/query/bias"):
        assert paths[never] is False, never
    no_embeddings = _decaying_paths(params, decay_embeddings=False)
    assert not no_embeddings["wte/embedding"] and not no_embeddings["wpe"]


def test_released_grouping_decays_all_but_biases_and_gains():
    config = presets.model_config("EReg(SM(t)+ScFuFFN)", size="tiny", weight_norm=("qk",), ln_final=True,
                                  activation="learnable_leaky_relu", ffn_fused=False, bias_groups=("qk", "ffn"))
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    paths = _decaying_paths(params, grouping="released")
    kept = {p for p, d in paths.items() if not d}
    assert kept == {p for p in paths if p.endswith("/bias") or p.endswith("/scale")}
    for decayed in ("entropy_thresholds", "leaky_slope", "block_0/ffn_alpha", "block_0/attn/log_temperature"):
        assert paths[decayed], decayed
    assert "ln_final/scale" in kept and "block_0/attn/query/scale" in kept


def test_layer_norm_gains_do_not_decay():
    params = init_variables(AeroLM(presets.model_config("SM+LN+G", size="tiny")), jax.random.key(0))["params"]
    paths = _decaying_paths(params)
    assert not paths["block_0/ln_attn/scale"] and not paths["ln_final/bias"]


@pytest.mark.parametrize("decay", ["linear", "cosine", "polynomial", "constant"])
def test_schedule_warms_up_then_decays(decay):
    schedule = learning_rate_schedule(1e-3, 100, warmup_fraction=0.1, decay=decay)
    values = np.array([float(schedule(s)) for s in range(101)])
    assert values[0] == 0 and values[10] == pytest.approx(1e-3)
    assert np.all(np.diff(values[:11]) > 0)
    if decay == "constant":
        assert values[-1] == pytest.approx(1e-3)
    else:
        assert np.all(np.diff(values[10:]) <= 1e-12) and values[-1] < 1e-4


def test_unknown_decay_is_refused():
    with pytest.raises(ConfigError, match="linear, cosine, polynomial, constant"):
        learning_rate_schedule(1e-3, 10, decay="step")
