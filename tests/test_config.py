"""Every invalid configuration fails at construction with one line naming field and accepted values."""

import pathlib

import jax.numpy as jnp
import pytest

from aero_jax import entropy, presets
from aero_jax.config import ConfigError, ModelConfig
from aero_jax.run_config import validate


def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    "fields, needles",
    [
        (dict(activation="gelu", ffn_fused=True), ("ffn_fused", "activation='identity'")),
        (dict(weight_norm=("qk",), spectral_norm=("qk", "v")), ("spectral_norm", "qk")),
        (dict(num_heads=5, d_model=32), ("num_heads=5", "divisor of d_model=32")),
        (dict(learnable_temperature=True, temperature_init=0.0), ("temperature_init", "positive")),
        (dict(temperature_init=-1.0), ("temperature_init", "positive")),
        (dict(ereg_gamma=1.0), ("ereg_gamma", "[0, 1)")),
        (dict(ereg_gamma=-0.1), ("ereg_gamma", "[0, 1)")),
        (dict(activation="swish"), ("activation", "gelu, relu, leaky_relu")),
        (dict(weight_norm=("qkv",)), ("weight_norm", "qk, v, o, ffn")),
        (dict(ffn_layers=(0, 7), num_layers=4), ("ffn_layers", "[0, 4)")),
        (dict(dtype="float8"), ("dtype", "float32, bfloat16, float16")),
        (dict(dtype="float16", param_dtype="bfloat16"), ("param_dtype", "float32 with dtype='float16'")),
        (dict(ereg_reduction="sum"), ("ereg_reduction", "per_position_sum, head_mean")),
        (dict(entropy_reg=True, sow_entropy=False), ("sow_entropy", "entropy_reg")),
        (dict(ffn_scaling=True, ffn_alpha_init=0.0), ("ffn_alpha_init", "positive")),
        (dict(num_layers=0), ("num_layers", "positive integer")),
        (dict(remat="full"), ("remat", "none, block, dots")),
    ],
)
def test_invalid_field_combinations_fail_at_config_time(fields, needles):
    with pytest.raises(ConfigError) as excinfo:
        ModelConfig(**fields)
    _one_line_error(excinfo, *needles)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as excinfo:
        presets.model_config("SM+LN+Swish")
    _one_line_error(excinfo, "SM+LN+Swish", "SM+LN+G", "EReg(SM(t)+ScFuFFN)")


def test_unknown_override_field_is_named():
    with pytest.raises(ConfigError) as excinfo:
        presets.model_config("SM", n_layers=3)
    _one_line_error(excinfo, "n_layers", "num_layers")


def test_unknown_size_is_named():
    with pytest.raises(ConfigError) as excinfo:
        presets.model_config("SM", size="huge")
    _one_line_error(excinfo, "huge", "gpt2-small", "tiny")


def test_thresholds_of_the_wrong_shape_are_refused():
    entropies = jnp.ones((2, 1, 3, 4))
    with pytest.raises(ConfigError) as excinfo:
        entropy.penalty(entropies, jnp.ones((3, 2)), gamma=0.2, seq_len=4)
    _one_line_error(excinfo, "thresholds shape (3, 2)", "(2, 3)")


def test_norm_groups_accept_the_papers_spelling():
    assert ModelConfig(weight_norm="qk+ffn").weight_norm == ("qk", "ffn")


def test_presets_keep_size_and_architecture_apart():
    tiny = presets.model_config("SM+ScFuFFN[FFN:L/2]", size="tiny", num_layers=4)
    small = presets.model_config("SM+ScFuFFN[FFN:L/2]")
    assert tiny.ffn_layers == (0, 1) and small.ffn_layers == tuple(range(6))
    assert (small.num_layers, small.num_heads, small.d_model) == (12, 12, 768)
    assert presets.model_config("EReg(SM)").entropy_reg and not presets.model_config("SM").entropy_reg


def _paper_config(spec):
    from aero_jax.cli import load_config_file

    return load_config_file(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / spec))


def test_codeparrot_config_is_the_released_recipe():
    c = _paper_config("gpt2_codeparrot.py:ereg_sm_t_scfuffn")
    validate(c)
    assert (c.train.batch_size, c.train.grad_accum_steps, c.model.ereg_rows) == (512, 4, 128)
    assert c.train.num_steps == 2_100_000_000 // (512 * 128) == 32043
    assert (c.optim.peak_lr, c.optim.warmup_fraction, c.optim.weight_decay, c.optim.clip_norm) == (1e-3, 0.05, 0.1, 1.0)
    assert c.optim.peak_lr * c.optim.end_lr_fraction == pytest.approx(1e-7)
    assert c.model.ereg_weight == 1e-5 and c.model.temperature_init == 1e-2


def test_codeparrot_config_reads_its_vocabulary_from_the_papers_tokenizer(tmp_path, monkeypatch):
    import tokenizers
    from tokenizers import models

    monkeypatch.setenv("HOME", str(tmp_path))
    c = _paper_config("gpt2_codeparrot.py:sm_ln_g")
    assert c.data.dataset == "codeparrot_ds/released" and c.model.vocab_size == 50257  # no file yet
    folder = tmp_path / "aero_data" / "code-search-net-tokenizer"
    folder.mkdir(parents=True)
    vocab = {f"t{i}": i for i in range(999)}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    assert _paper_config("gpt2_codeparrot.py:sm_ln_g").model.vocab_size == 1000


@pytest.mark.parametrize("tokens, batch, accumulation, steps", [("1.2B", 128, 4, 18265), ("2.4B", 128, 4, 36529),
                                                               ("4.8B", 256, 8, 36529)])
def test_languini_config_follows_languinis_gpt_small_recipe(tokens, batch, accumulation, steps):
    c = _paper_config(f"gpt2_languini.py:ereg_sm_t_scfuffn,tokens={tokens}")
    validate(c)
    assert (c.train.batch_size, c.train.grad_accum_steps, c.train.num_steps) == (batch, accumulation, steps)
    assert c.train.num_steps * batch * 512 == pytest.approx(float(tokens[:-1]) * 1e9, rel=0.01)
    assert (c.optim.peak_lr, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm, c.optim.decay) == (
        6e-4, 0.95, 0.0, 0.0, "cosine")
    assert c.model.ereg_weight == 5e-5 and c.model.temperature_init == 0.1 and c.model.vocab_size == 16384
