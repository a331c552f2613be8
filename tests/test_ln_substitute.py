"""The LayerNorm substitute: folding is exact, and a tiny trained model's perplexity change is reported."""

import jax
import numpy as np
import pytest

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.evaluate import evaluate_workdir
from aero_jax.layers import LN_CALIBRATION
from aero_jax.ln_substitute import calibrate, fold, substitute_report
from aero_jax.model import AeroLM, init_variables
from aero_jax.run_config import base_config, model_section
from aero_jax.trainer import Trainer


@pytest.mark.parametrize("name", ["SM+LN+G", "SM+LN", "SM+LN+R"])
def test_folded_model_equals_the_unfolded_substitute(name):
    config = presets.model_config(name, size="tiny", max_len=16, ffn_fused=False)
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    tokens = jax.random.randint(jax.random.key(2), (3, 16), 0, config.vocab_size)
    calibration = calibrate(AeroLM(config), params, np.asarray(tokens), batch_size=3, batches=1)
    substitute = AeroLM(config.replace(ln_frozen=True)).apply({"params": params, LN_CALIBRATION: calibration},
                                                              tokens)
    folded_config, folded_params, folded_calibration = fold(config, params, calibration)
    assert not folded_config.ln_attn and not folded_config.ln_ffn and folded_config.ln_final
    assert "ln_attn" not in folded_params["block_0"]
    folded = AeroLM(folded_config).apply({"params": folded_params, LN_CALIBRATION: folded_calibration}, tokens)
    np.testing.assert_allclose(np.asarray(folded), np.asarray(substitute), rtol=1e-4, atol=1e-4)
    original = AeroLM(config).apply({"params": params}, tokens)
    assert not np.allclose(np.asarray(original), np.asarray(substitute))  # it is an approximation


def test_a_model_without_layernorm_is_refused():
    config = presets.model_config("SM", size="tiny", max_len=16)
    params = init_variables(AeroLM(config), jax.random.key(0))["params"]
    with pytest.raises(ConfigError, match="no LayerNorm to substitute"):
        calibrate(AeroLM(config), params, np.zeros((2, 16), np.int32), batch_size=2, batches=1)


def test_report_on_a_tiny_trained_model(corpus, tmp_path):
    c = base_config()
    c.model = model_section("SM+LN+G", size="tiny", vocab_size=257, max_len=32)
    c.data.update(corpus)
    c.train.update(num_steps=30, batch_size=8, log_every=10, eval_every=30, eval_batch_size=4, eval_batches=4,
                   checkpoint_every=30)
    summary = Trainer(c, str(tmp_path / "run")).run()
    result = substitute_report(str(tmp_path / "run"), calibration_batches=4, finetune_steps=3)
    # One evaluation: the run's summary, aero-eval and the substitute's report read the same rows the same way.
    assert result["perplexity_with_layernorm"] == pytest.approx(summary["validation_perplexity"], rel=1e-6)
    assert evaluate_workdir(str(tmp_path / "run"))["validation_perplexity"] == pytest.approx(
        summary["validation_perplexity"], rel=1e-6)
    assert result["validation_rows"] == summary["validation_rows"] and "random sample of 16 " in summary[
        "validation_rows"]
    for key in ("perplexity_with_layernorm", "perplexity_substitute", "perplexity_folded",
                "perplexity_substitute_finetuned", "perplexity_with_layernorm_finetuned"):
        assert np.isfinite(result[key]) and result[key] > 1, key
    assert result["perplexity_folded"] == pytest.approx(result["perplexity_substitute"], rel=1e-4)
    assert "LN" in result["pi_cost_with_layernorm"]["nonlinear_ops"]
    assert "LN" not in result["pi_cost_substitute"]["nonlinear_ops"]
    assert result["pi_cost_substitute"]["comm_gb"] < result["pi_cost_with_layernorm"]["comm_gb"]
