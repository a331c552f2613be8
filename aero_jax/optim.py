"""AdamW with parameter-group masks, warmup then decay, and global-norm clipping (optax)."""

from __future__ import annotations

from typing import Union

import jax
import optax

from aero_jax.config import ConfigError

DECAYED_MATRICES = ("kernel",)
EMBEDDINGS = ("embedding", "wpe")
DECAY_SHAPES = ("linear", "cosine", "polynomial", "constant")


def decay_mask(params, *, decay_embeddings: bool = True):
    """True for leaves that take weight decay: linear kernels, and embeddings if configured.

    Biases, LayerNorm and weight-norm gains, thresholds, temperatures, FFN scales, leaky
    slopes and strength logits are never decayed.
    """
    names = DECAYED_MATRICES + (EMBEDDINGS if decay_embeddings else ())

    def decays(path, _):
        return getattr(path[-1], "key", None) in names

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
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the decay mask (the papers' optimizer)."""
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                    mask=lambda p: decay_mask(p, decay_embeddings=decay_embeddings)),
    )
