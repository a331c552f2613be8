"""Model FLOPs from the config (one source of truth) and MFU against a per-chip peak table.

Convention (method file, section 6): a matmul of [T, a] by [a, b] costs 2 T a b FLOPs. Per
layer and sequence: attention projections 2 T (4 d^2); the two T x T products (scores, weighted
values) 3 T^2 d as the papers count them, or 4 T^2 d as the step executes them (`executed`); the
FFN 2 T d d_ff per matrix, or 2 T d^2 when fused; the LM head 2 T d V. Training costs three
forward passes (forward + backward), counted as executed.
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


ATTENTION_CONVENTIONS = ("papers", "executed")


def attention_flops(c: ModelConfig, seq_len: int, *, convention: str = "papers") -> float:
    """Attention FLOPs (projections, scores, weighted values) of one forward pass, all layers.

    `papers`: 8 T d^2 + 3 T^2 d per layer, which reproduces every published attention-FLOPs
    figure within 0.5% (7.7B, 16.3B, 36.2B at T = 128, 256, 512 with L = 12; 11.6B with L = 18);
    the full products would be 4 T^2 d (+6.8% at T = 512). `executed`: 8 T d^2 + 4 T^2 d, what the
    step computes (the masked half of each T x T product included), for MFU and XLA's counts.
    """
    if convention not in ATTENTION_CONVENTIONS:
        raise ValueError(f"convention={convention!r} is invalid; accepted: {', '.join(ATTENTION_CONVENTIONS)}")
    projections = 2 * seq_len * 4 * c.d_model * c.d_model
    products = (3 if convention == "papers" else 4) * seq_len * seq_len * c.d_model
    return c.num_layers * (projections + products)


def forward_flops(c: ModelConfig, seq_len: Optional[int] = None, *, convention: str = "papers") -> float:
    """FLOPs of one forward pass over one sequence, LM head included."""
    T = seq_len or c.max_len
    return ffn_flops(c, T) + attention_flops(c, T, convention=convention) + 2 * T * c.d_model * c.vocab_size


def train_flops_per_token(c: ModelConfig, seq_len: Optional[int] = None) -> float:
    """FLOPs the training step executes per token (forward and backward)."""
    T = seq_len or c.max_len
    return 3 * forward_flops(c, T, convention="executed") / T


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
