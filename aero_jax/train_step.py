"""The pure, jittable training and evaluation steps.

A step takes the whole global batch [B, T]; with gradient accumulation it is split into
`accum_steps` microbatches whose gradients are averaged before one optimizer update, so the
update equals the one on the full batch (up to float summation order; with the `head_mean`
penalty, whose tolerance gate acts on batch means, up to that gate).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from aero_jax.entropy import entropy_range_shares
from aero_jax.model import AeroLM, forward, init_variables, split_variables
from aero_jax.objective import cross_entropy, lm_loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trainable collections, e.g. spectral-norm vectors
    opt_state: Any
    lr_scale: jax.Array  # multiplies every update; lowered by the divergence-recovery policy


def create_train_state(model: AeroLM, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params, model_state = split_variables(init_variables(model, rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=optimizer.init(params), lr_scale=jnp.ones((), jnp.float32))


def _grads(params, model_state, tokens_BxT, model):
    loss = functools.partial(lm_loss, model=model, train=True)
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    (_, (metrics, model_state)), grads = grad_fn(params, model_state, tokens_BxT)
    return grads, metrics, model_state


def _accumulated_grads(params, model_state, tokens_BxT, model, accum_steps: int):
    """Mean gradients and metrics over microbatches, carrying the model state through them."""
    if accum_steps == 1:
        return _grads(params, model_state, tokens_BxT, model)
    # Strided microbatches (rows a, a + A, a + 2A, ...) keep each one spread over the batch shards.
    micro_AxMxT = tokens_BxT.reshape(-1, accum_steps, tokens_BxT.shape[-1]).swapaxes(0, 1)

    def one(carry, tokens_MxT):
        grad_sum, metric_sum, state = carry
        grads, metrics, state = _grads(params, state, tokens_MxT, model)
        add = functools.partial(jax.tree_util.tree_map, jnp.add)
        return (add(grad_sum, grads), add(metric_sum, metrics), state), None

    zeros_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    metric_shapes = jax.eval_shape(lambda: _grads(params, model_state, micro_AxMxT[0], model)[1])
    zeros_metrics = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
    (grad_sum, metric_sum, model_state), _ = jax.lax.scan(one, (zeros_grads, zeros_metrics, model_state),
                                                          micro_AxMxT)
    grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grad_sum)
    # Counts add up over microbatches; every other metric is a mean.
    metrics = {k: v if k == "nonfinite_attention" else v / accum_steps for k, v in metric_sum.items()}
    return grads, metrics, model_state


def train_step(state: TrainState, tokens_BxT: jnp.ndarray, *, model: AeroLM,
               optimizer: optax.GradientTransformation, schedule: Optional[optax.Schedule] = None,
               accum_steps: int = 1) -> Tuple[TrainState, dict]:
    """One optimizer update on a global batch; returns the new state and the step's metrics."""
    grads, metrics, model_state = _accumulated_grads(state.params, state.model_state, tokens_BxT, model,
                                                     accum_steps)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * state.lr_scale, updates)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step) * state.lr_scale
    if "head_entropy" in metrics:
        metrics["entropy_range_shares"] = entropy_range_shares(metrics["head_entropy"])
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
    return new_state, metrics


def jit_train_step(model: AeroLM, optimizer: optax.GradientTransformation, *,
                   schedule: Optional[optax.Schedule] = None, accum_steps: int = 1,
                   state_shardings=None, batch_sharding=None, metrics_sharding=None):
    """train_step with its configuration bound, jitted once, the state donated.

    With shardings, the step runs as one SPMD program over their mesh (jit's in/out shardings).
    """
    step = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                             accum_steps=accum_steps)
    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, metrics_sharding), donate_argnums=0)


def eval_step(params, model_state, tokens_BxT: jnp.ndarray, *, model: AeroLM) -> dict:
    """Sums over a batch: cross-entropy and its token count, and head entropy [L, H] per sequence."""
    logits, diagnostics, _ = forward(model, {"params": params, **model_state}, tokens_BxT)
    targets = tokens_BxT[:, 1:]
    sums = {"ce_sum": cross_entropy(logits[:, :-1], targets) * targets.size,
            "tokens": jnp.asarray(targets.size, jnp.float32),
            "sequences": jnp.asarray(tokens_BxT.shape[0], jnp.float32)}
    if diagnostics:
        sums["head_entropy_sum"] = jnp.sum(jnp.mean(diagnostics["entropy"], axis=3), axis=1)
    return sums
