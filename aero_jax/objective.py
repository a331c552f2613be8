"""The training objective: next-token cross-entropy plus lambda times the EReg penalty.

The regularizer is a variant of the loss, selected by the model config; the training step is
the same for every architecture.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from aero_jax import entropy
from aero_jax.model import STRENGTH_LOGITS, THRESHOLDS, AeroLM, forward


@jax.named_scope("cross_entropy")  # names its operations in profiles (benchmarks/profile_step.py)
def cross_entropy(logits_BxTxV: jnp.ndarray, targets_BxT: jnp.ndarray) -> jnp.ndarray:
    """Mean next-token cross-entropy in float32."""
    logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1))


def entropy_penalty(params, entropies_LxBxHxT: jnp.ndarray, model: AeroLM) -> jnp.ndarray:
    """The EReg penalty for this model's config, reading thresholds (and strengths) from params."""
    c = model.config
    strengths = entropy.head_strengths(params[STRENGTH_LOGITS]) if c.ereg_head_strengths else None
    return entropy.penalty(entropies_LxBxHxT, params[THRESHOLDS], gamma=c.ereg_gamma,
                           seq_len=entropies_LxBxHxT.shape[-1], reduction=c.ereg_reduction,
                           strengths_LxH=strengths)


def lm_loss(params, model_state, tokens_BxT: jnp.ndarray, *, model: AeroLM, train: bool = True
            ) -> Tuple[jnp.ndarray, Tuple[dict, dict]]:
    """(loss, (metrics, new model state)) for a batch of token ids.

    The model reads all T tokens (so entropies and E_max = log T cover T positions, as in the
    papers' Hugging Face setup); the loss covers positions 0..T-2 predicting tokens 1..T-1.
    The `per_position_sum` penalty is a sum over rows; it is rescaled to stand for `ereg_rows`
    rows (the released code's 128 per device), so its strength does not depend on the batch.
    """
    c = model.config
    logits, diagnostics, new_state = forward(model, {"params": params, **model_state}, tokens_BxT, train=train)
    ce = cross_entropy(logits[:, :-1], tokens_BxT[:, 1:])
    metrics = {"ce": ce}
    loss = ce
    if c.entropy_reg:
        rows = c.ereg_rows / tokens_BxT.shape[0] if c.ereg_reduction == "per_position_sum" else 1.0
        metrics["penalty"] = rows * entropy_penalty(params, diagnostics["entropy"], model)
        loss = ce + c.ereg_weight * metrics["penalty"]
    if diagnostics:
        metrics["head_entropy"] = entropy.head_entropy(diagnostics["entropy"])
        metrics["nonfinite_attention"] = diagnostics["nonfinite"]
    metrics["loss"] = loss
    return loss, (metrics, new_state)
