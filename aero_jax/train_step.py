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


LOSS_SCALE_INIT = 2.0 ** 16  # PyTorch GradScaler's defaults, which the papers' HF Trainer (fp16=True) used
LOSS_SCALE_GROWTH_INTERVAL = 2000


@flax.struct.dataclass
class LossScale:
    """A dynamic loss scale with GradScaler's rule: a step whose gradients are not all finite is skipped and
    halves the scale; `growth_interval` clean steps in a row double it."""

    scale: jax.Array  # float32: the loss is multiplied by it before differentiation
    clean_steps: jax.Array  # int32: clean steps since the scale last changed
    skipped: jax.Array  # int32: updates skipped so far in the run
    growth_interval: int = flax.struct.field(pytree_node=False, default=LOSS_SCALE_GROWTH_INTERVAL)

    @classmethod
    def create(cls, init: float = LOSS_SCALE_INIT, growth_interval: int = LOSS_SCALE_GROWTH_INTERVAL) -> "LossScale":
        return cls(jnp.asarray(init, jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                   growth_interval)

    def after(self, finite: jax.Array) -> "LossScale":
        """The scale for the next step, given whether this step's gradients were all finite."""
        grown = self.clean_steps + 1 >= self.growth_interval
        scale = jnp.where(finite, jnp.where(grown, self.scale * 2, self.scale), self.scale * 0.5)
        clean = jnp.where(finite & ~grown, self.clean_steps + 1, 0)
        return self.replace(scale=scale, clean_steps=clean.astype(jnp.int32),
                            skipped=self.skipped + (~finite).astype(jnp.int32))


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trainable collections, e.g. spectral-norm vectors
    opt_state: Any
    lr_scale: jax.Array  # multiplies every update; lowered by the divergence-recovery policy
    loss_scale: Optional[LossScale] = None  # float16 compute only: None adds nothing to a checkpoint


def create_train_state(model: AeroLM, optimizer: optax.GradientTransformation, rng: jax.Array,
                       loss_scale: Optional[LossScale] = None) -> TrainState:
    """A fresh state; float16 models get a dynamic loss scale (LossScale.create()) unless one is given."""
    params, model_state = split_variables(init_variables(model, rng))
    if loss_scale is None and model.config.dtype == "float16":
        loss_scale = LossScale.create()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=optimizer.init(params), lr_scale=jnp.ones((), jnp.float32), loss_scale=loss_scale)


def _grads(params, model_state, tokens_BxT, model, loss_multiplier):
    """Gradients of the loss times `loss_multiplier` (the loss scale, or 1), metrics and the new model state."""
    def scaled(params, model_state, tokens_BxT):
        loss, aux = lm_loss(params, model_state, tokens_BxT, model=model, train=True)
        return loss * loss_multiplier, aux

    (_, (metrics, model_state)), grads = jax.value_and_grad(scaled, has_aux=True)(params, model_state, tokens_BxT)
    return grads, metrics, model_state


def _accumulated_grads(params, model_state, tokens_BxT, model, accum_steps: int, loss_multiplier=1.0):
    """Mean gradients (of the loss times `loss_multiplier`) and metrics over microbatches, carrying the model
    state through them."""
    if accum_steps == 1:
        return _grads(params, model_state, tokens_BxT, model, loss_multiplier)
    # Strided microbatches (rows a, a + A, a + 2A, ...) keep each one spread over the batch shards.
    micro_AxMxT = tokens_BxT.reshape(-1, accum_steps, tokens_BxT.shape[-1]).swapaxes(0, 1)

    def one(carry, tokens_MxT):
        grad_sum, metric_sum, state = carry
        grads, metrics, state = _grads(params, state, tokens_MxT, model, loss_multiplier)
        add = functools.partial(jax.tree_util.tree_map, jnp.add)
        return (add(grad_sum, grads), add(metric_sum, metrics), state), None

    zeros_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    metric_shapes = jax.eval_shape(lambda: _grads(params, model_state, micro_AxMxT[0], model, loss_multiplier)[1])
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
    """One optimizer update on a global batch; returns the new state and the step's metrics.

    With a loss scale, gradients of the scaled loss are unscaled in float32; when any is not finite the update
    is skipped (parameters, optimizer state and model state stay bit-identical, so the schedule's count does
    not advance either, as GradScaler skips optimizer.step) and only the step counter and the scale move.
    """
    scale = state.loss_scale
    grads, metrics, model_state = _accumulated_grads(state.params, state.model_state, tokens_BxT, model,
                                                     accum_steps, 1.0 if scale is None else scale.scale)
    if scale is not None:
        grads = jax.tree_util.tree_map(lambda g: g / scale.scale.astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * state.lr_scale, updates)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if scale is not None:
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))

        def unless_skipped(new, old):
            return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)

        params, opt_state = unless_skipped(params, state.params), unless_skipped(opt_state, state.opt_state)
        model_state = unless_skipped(model_state, state.model_state)
        scale = scale.after(finite)
        metrics.update(skipped_updates=(~finite).astype(jnp.int32), loss_scale=scale.scale)
    metrics["param_norm"] = optax.tree.norm(params)
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step) * state.lr_scale
    if "head_entropy" in metrics:
        metrics["entropy_range_shares"] = entropy_range_shares(metrics["head_entropy"])
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
                              loss_scale=scale)
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
