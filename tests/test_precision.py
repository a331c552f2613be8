"""float16 as the papers trained: float32 master weights, half-precision products, a dynamic loss scale."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aero_jax import presets
from aero_jax.model import AeroLM
from aero_jax.optim import adamw
from aero_jax.run_config import model_section
from aero_jax.train_step import LossScale, create_train_state, train_step
from aero_jax.trainer import Divergence, Trainer
from conftest import assert_one_line, run_script, run_until_killed, small_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"


def tiny_step(loss_scale: LossScale):
    """A float16 tiny model's fresh state with `loss_scale`, its jitted train step and a batch."""
    model = AeroLM(presets.model_config("EReg(SM(t)+ScFuFFN)", size="tiny", vocab_size=257, max_len=16,
                                        dtype="float16"))
    optimizer = adamw(1e-3)
    state = create_train_state(model, optimizer, jax.random.key(0), loss_scale)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 257)
    return state, jax.jit(functools.partial(train_step, model=model, optimizer=optimizer)), tokens


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_a_gradient_that_overflows_skips_exactly_that_update_and_halves_the_scale():
    # At float32's largest scale the scaled loss's gradients overflow to inf: GradScaler's case.
    state, step, tokens = tiny_step(LossScale.create(init=float(jnp.finfo(jnp.float32).max)))
    params, opt_state = jax.device_get((state.params, state.opt_state))
    after, metrics = step(state, tokens)
    assert int(metrics["skipped_updates"]) == 1 and int(after.loss_scale.skipped) == 1
    assert float(after.loss_scale.scale) == float(jnp.finfo(jnp.float32).max) / 2
    assert leaves_equal(after.params, params) and leaves_equal(after.opt_state, opt_state)
    assert int(after.step) == 1  # the data moves on; the schedule's count (in the optimizer state) does not

    clean, metrics = step(after.replace(loss_scale=LossScale.create()), tokens)
    assert int(metrics["skipped_updates"]) == 0 and not leaves_equal(clean.params, params)


def test_the_scale_doubles_after_growth_interval_clean_steps():
    state, step, tokens = tiny_step(LossScale.create(init=8.0, growth_interval=2))
    state, _ = step(state, tokens)
    assert (float(state.loss_scale.scale), int(state.loss_scale.clean_steps)) == (8.0, 1)
    state, metrics = step(state, tokens)
    assert (float(state.loss_scale.scale), int(state.loss_scale.clean_steps)) == (16.0, 0)
    assert float(metrics["loss_scale"]) == 16.0


def test_float32_and_bfloat16_states_carry_no_loss_scale():
    model = AeroLM(presets.model_config("SM+LN+G", size="tiny", vocab_size=257, max_len=16, dtype="bfloat16"))
    assert create_train_state(model, adamw(1e-3), jax.random.key(0)).loss_scale is None


def float16_config(corpus, **train):
    config = small_config(corpus, loss_scale_growth_interval=3, **train)
    config.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny", vocab_size=257, max_len=32, dtype="float16")
    return config


@pytest.mark.slow
def test_kill_and_resume_keep_the_loss_scale_and_skip_count_bit_exact(corpus, tmp_path):
    config = float16_config(corpus)
    straight = Trainer(config, str(tmp_path / "straight"))
    straight.run()
    run_until_killed(Trainer(config, str(tmp_path / "resumed")), at_step=6)
    resumed = Trainer(config, str(tmp_path / "resumed"))
    assert resumed.resumed_from == 4
    assert float(resumed.state.loss_scale.scale) == 2.0 ** 17  # grew once, after 3 clean steps
    resumed.run()
    assert float(resumed.state.loss_scale.scale) == 2.0 ** 18 and int(resumed.state.loss_scale.skipped) == 0
    assert leaves_equal(straight.state, resumed.state)


@pytest.mark.slow  # a whole run: make test stays within its 10 minutes
def test_a_loss_scale_that_falls_to_zero_stops_the_run_naming_the_step(corpus, tmp_path):
    trainer = Trainer(float16_config(corpus, num_steps=60, checkpoint_every=1000, loss_scale_init=2.0 ** -120),
                      str(tmp_path / "run"))
    nan = lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    trainer.state = trainer.state.replace(params=jax.tree_util.tree_map(nan, trainer.state.params))
    with pytest.raises(Divergence, match=r"the loss scale fell to zero .* at step \d+ .*model.dtype=bfloat16"):
        trainer.run()


@pytest.mark.parametrize("overrides, expected", [
    (["--config.model.dtype=float8"], "dtype='float8' is invalid; accepted: float32, bfloat16, float16"),
    (["--config.model.dtype=float16", "--config.model.param_dtype=bfloat16"],
     "param_dtype='bfloat16' is invalid; accepted: float32 with dtype='float16'"),
    (["--config.model.dtype=float16", "--config.train.loss_scale_init=0"], "train.loss_scale_init=0"),
])
def test_bad_precision_settings_are_refused_in_one_line(tmp_path, overrides, expected):
    result = run_script("aero-train", SMOKE, f"--workdir={tmp_path / 'run'}", *overrides)
    assert_one_line(result, "aero-train", 2, expected)
