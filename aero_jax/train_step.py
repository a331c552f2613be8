"""The pure, jittable training step: loss and gradients, optax update, spectral state carried."""

from __future__ import annotations

import functools
from typing import Any, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from aero_jax.model import AeroLM, init_variables, split_variables
from aero_jax.objective import lm_loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trainable collections, e.g. spectral-norm vectors
    opt_state: Any


def create_train_state(model: AeroLM, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params, model_state = split_variables(init_variables(model, rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=optimizer.init(params))


def train_step(state: TrainState, tokens_BxT: jnp.ndarray, *, model: AeroLM,
               optimizer: optax.GradientTransformation) -> Tuple[TrainState, dict]:
    """One update on a batch; returns the new state and the step's metrics (device arrays)."""
    grad_fn = jax.value_and_grad(functools.partial(lm_loss, model=model, train=True), has_aux=True)
    (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, tokens_BxT)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = TrainState(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
    return new_state, metrics


def jit_train_step(model: AeroLM, optimizer: optax.GradientTransformation):
    """train_step with the model and optimizer bound, jitted once, the state donated."""
    return jax.jit(functools.partial(train_step, model=model, optimizer=optimizer), donate_argnums=0)
