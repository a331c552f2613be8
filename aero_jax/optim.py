"""AdamW with parameter-group masks, warmup then decay, and global-norm clipping (optax)."""

from __future__ import annotations

from typing import Union

import jax
import optax

from aero_jax.config import ConfigError

DECAYED_MATRICES = ("kernel",)
EMBEDDINGS = ("embedding", "wpe")
NEVER_DECAYED_IN_RELEASED = ("bias", "scale")  # biases, LayerNorm parameters, weight-norm gains
DECAY_SHAPES = ("linear", "cosine", "polynomial", "constant")
DECAY_GROUPINGS = ("aero", "released")


def decay_mask(params, *, decay_embeddings: bool = True, grouping: str = "aero"):
    """True for leaves that take weight decay.

    `aero` (default): linear kernels, and embeddings if configured; biases, LayerNorm and
    weight-norm gains, thresholds, temperatures, FFN scales, leaky slopes and strength logits
    are never decayed (the method file: "no weight decay on theta, temperatures, gains, biases").
    `released`: the released optimizer (train_utils.py, MyTrainer.create_optimizer) decays every
    parameter but LayerNorm parameters, biases and gains, so slopes, thresholds, temperatures
    and FFN scales are decayed too.
    """
    if grouping not in DECAY_GROUPINGS:
        raise ConfigError(f"optim.decay_grouping={grouping!r} is invalid; accepted: {', '.join(DECAY_GROUPINGS)}")

    def decays(path, _):
        name = getattr(path[-1], "key", None)
        if name in EMBEDDINGS:
            return decay_embeddings
        if grouping == "released":
            return name not in NEVER_DECAYED_IN_RELEASED
        return name in DECAYED_MATRICES

    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(
    peak: float, total_steps: int, *, warmup_fraction: float = 0.05, decay: str = "linear",
    end_fraction: float = 0.0, power: float = 2.0,
) -> optax.Schedule:
    """Linear warmup to `peak` over warmup_fraction of the steps, then the chosen decay to end."""
    if decay not in DECAY_SHAPES:
        raise ConfigError(f"optim.decay={decay!r} is invalid; accepted: {', '.join(DECAY_SHAPES)}")
    if not 0 <= warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction={warmup_fraction!r} is invalid; accepted: a number in [0, 1)")
    if total_steps < 1:
        raise ConfigError(f"train.num_steps={total_steps!r} is invalid; accepted: a positive integer")
    warmup = int(round(warmup_fraction * total_steps))
    rest = max(total_steps - warmup, 1)
    end = peak * end_fraction
    decays = {
        "linear": lambda: optax.linear_schedule(peak, end, rest),
        "cosine": lambda: optax.cosine_decay_schedule(peak, rest, alpha=end_fraction),
        "polynomial": lambda: optax.polynomial_schedule(peak, end, power, rest),
        "constant": lambda: optax.constant_schedule(peak),
    }
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decays[decay]()], [warmup])


def adamw(
    learning_rate: Union[float, optax.Schedule],
    *,
    weight_decay: float = 0.1,
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay_embeddings: bool = True,
    decay_grouping: str = "aero",
) -> optax.GradientTransformation:
    """Global-norm clipping (off when clip_norm is 0), then AdamW with the decay mask (the papers' optimizer)."""
    adam = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=lambda p: decay_mask(p, decay_embeddings=decay_embeddings, grouping=decay_grouping))
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam
