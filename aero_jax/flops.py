"""Model FLOPs from the config (one source of truth) and MFU against a per-chip peak table.

Convention (method file, section 6): a matmul of [T, a] by [a, b] costs 2 T a b FLOPs. Per
layer and sequence: attention projections 2 T (4 d^2); scores and weighted values 2 x 2 T^2 d
(the full T x T products, as the papers count them); the FFN 2 T d d_ff per matrix, or 2 T d^2
when fused; the LM head 2 T d V. Training costs three forward passes (forward + backward).
"""

from __future__ import annotations

from typing import Optional

from aero_jax.config import ModelConfig

# Dense bf16 peak FLOP/s per chip, by the device_kind JAX reports.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def ffn_flops(c: ModelConfig, seq_len: int) -> float:
    """FFN FLOPs of one forward pass over one sequence, all layers."""
    per_layer = 2 * seq_len * c.d_model * c.d_model if c.ffn_fused else 2 * 2 * seq_len * c.d_model * c.d_ff
    return per_layer * sum(c.has_ffn(layer) for layer in range(c.num_layers))


def attention_flops(c: ModelConfig, seq_len: int) -> float:
    """Attention FLOPs (projections, scores, weighted values) of one forward pass, all layers."""
    projections = 2 * seq_len * 4 * c.d_model * c.d_model
    scores_and_values = 2 * 2 * seq_len * seq_len * c.d_model
    return c.num_layers * (projections + scores_and_values)


def forward_flops(c: ModelConfig, seq_len: Optional[int] = None) -> float:
    """FLOPs of one forward pass over one sequence, LM head included."""
    T = seq_len or c.max_len
    return ffn_flops(c, T) + attention_flops(c, T) + 2 * T * c.d_model * c.vocab_size


def train_flops_per_token(c: ModelConfig, seq_len: Optional[int] = None) -> float:
    T = seq_len or c.max_len
    return 3 * forward_flops(c, T) / T


def peak_flops(device_kind: str) -> Optional[float]:
    """Peak FLOP/s of one chip, or None when unknown (CPUs are not guessed)."""
    for kind, flops in PEAK_FLOPS.items():
        if device_kind.startswith(kind):
            return flops
    return None


def mfu(tokens_per_s: float, c: ModelConfig, device_kind: str, num_devices: int) -> Optional[float]:
    peak = peak_flops(device_kind)
    if peak is None:
        return None
    return tokens_per_s * train_flops_per_token(c) / (peak * num_devices)
