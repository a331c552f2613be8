"""Attention entropy and the entropy regularizer: pure functions of arrays (method file, 4 and 8).

Shapes use single letters: L layers, B batch, H heads, T query positions, S key positions.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from aero_jax.config import ConfigError, PENALTY_REDUCTIONS

EPS = 1e-9
ENTROPY_RANGE_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the reference maximum M
MAX_REFERENCES = ("observed", "log_t")


@jax.named_scope("attention_entropy")  # names its operations in profiles (benchmarks/profile_step.py)
def attention_entropy(probs_BxHxTxS: jnp.ndarray) -> jnp.ndarray:
    """Shannon entropy of each attention row, -sum_j a_ij log(a_ij + eps) -> [..., T].

    Masked entries are exact zeros and contribute nothing. Computed in float32.
    """
    p = probs_BxHxTxS.astype(jnp.float32)
    return -jnp.sum(p * jnp.log(p + EPS), axis=-1)


def head_entropy(entropies_LxBxHxT: jnp.ndarray) -> jnp.ndarray:
    """Head-entropy matrix E(l, h) [L, H]: the mean over the batch and query positions."""
    return jnp.mean(entropies_LxBxHxT, axis=(1, 3))


def max_entropy(seq_len: int) -> float:
    """E_max = log T, the entropy of uniform attention over T keys."""
    return math.log(seq_len)


def entropy_range_shares(
    head_entropy_LxH, *, max_reference: str = "observed", seq_len: Optional[int] = None
) -> jnp.ndarray:
    """Share of heads in [0, M/4), [M/4, M/2), [M/2, 3M/4), [3M/4, M] -> [4].

    M is the largest head entropy observed (the papers' histograms) or log T.
    """
    if max_reference not in MAX_REFERENCES:
        raise ConfigError(f"max_reference={max_reference!r} is invalid; accepted: {', '.join(MAX_REFERENCES)}")
    e = jnp.asarray(head_entropy_LxH, jnp.float32).reshape(-1)
    if max_reference == "log_t":
        if seq_len is None:
            raise ConfigError("seq_len=None is invalid with max_reference='log_t'; accepted: a positive integer")
        m = max_entropy(seq_len)
    else:
        m = jnp.max(e)
    edges = jnp.asarray(ENTROPY_RANGE_EDGES[1:-1]) * m
    bins = jnp.searchsorted(edges, e, side="right")  # 0..3; the top range is closed at M
    return jnp.bincount(bins, length=4) / e.size


def head_strengths(strength_logits_LxH: jnp.ndarray) -> jnp.ndarray:
    """Per-head penalty weights, H * softmax over the heads of a layer.

    Each layer's weights sum to H (mean 1), so gradient descent can move strength between
    heads but cannot switch the regularizer off by shrinking every weight to zero.
    """
    num_heads = strength_logits_LxH.shape[-1]
    return num_heads * jax.nn.softmax(strength_logits_LxH, axis=-1)


@jax.named_scope("entropy_penalty")  # names its operations in profiles (benchmarks/profile_step.py)
def penalty(
    entropies_LxBxHxT: jnp.ndarray,
    thresholds_LxH: jnp.ndarray,
    *,
    gamma: float,
    seq_len: int,
    reduction: str = "per_position_sum",
    strengths_LxH: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """The EReg penalty: mean over layers and heads of the tolerance-gated squared deviation.

    delta = E - theta * E_max; a deviation counts (squared) only where |delta| > gamma * E_max.
    `per_position_sum` (the released code): one delta per sequence and query position, summed
    over batch and positions. `head_mean` (Algorithm 1): the head entropy is first averaged over
    batch and positions, then one delta per head.
    """
    if reduction not in PENALTY_REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r} is invalid; accepted: {', '.join(PENALTY_REDUCTIONS)}")
    if not 0 <= gamma < 1:
        raise ConfigError(f"gamma={gamma!r} is invalid; accepted: a number in [0, 1)")
    num_layers, _, num_heads, _ = entropies_LxBxHxT.shape
    _check_shape("thresholds", thresholds_LxH, (num_layers, num_heads))
    if strengths_LxH is not None:
        _check_shape("strengths", strengths_LxH, (num_layers, num_heads))
    e_max = max_entropy(seq_len)
    e = entropies_LxBxHxT.astype(jnp.float32)
    target = thresholds_LxH.astype(jnp.float32) * e_max
    if reduction == "per_position_sum":
        delta = e - target[:, None, :, None]
        per_head = jnp.sum(_gated_square(delta, gamma * e_max), axis=(1, 3))
    else:
        delta = head_entropy(e) - target
        per_head = _gated_square(delta, gamma * e_max)
    if strengths_LxH is not None:
        per_head = per_head * strengths_LxH
    return jnp.mean(per_head)


def _gated_square(delta, tolerance):
    return jnp.where(jnp.abs(delta) > tolerance, jnp.square(delta), 0.0)


def _check_shape(name: str, array, expected: Sequence[int]) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ConfigError(
            f"{name} shape {tuple(array.shape)} is invalid; accepted: {tuple(expected)} (layers x heads)"
        )
