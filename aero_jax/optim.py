"""AdamW with parameter-group masks: weight decay only on matrices (and embeddings if asked)."""

from __future__ import annotations

from typing import Union

import jax
import optax

DECAYED_MATRICES = ("kernel",)
EMBEDDINGS = ("embedding", "wpe")


def decay_mask(params, *, decay_embeddings: bool = True):
    """True for leaves that take weight decay: linear kernels, and embeddings if configured.

    Biases, LayerNorm and weight-norm gains, thresholds, temperatures, FFN scales and leaky
    slopes are never decayed.
    """
    names = DECAYED_MATRICES + (EMBEDDINGS if decay_embeddings else ())

    def decays(path, _):
        return getattr(path[-1], "key", None) in names

    return jax.tree_util.tree_map_with_path(decays, params)


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
