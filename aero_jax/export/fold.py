"""Folding a trained AeroLM into plain tensors: what a PyTorch model needs to compute the same logits.

Every training-time reparameterisation becomes the matrix it computes in evaluation mode:
weight norm g V/||V||, spectral norm W/sigma with the stored power-iteration vector, the FFN's
1/alpha (into its output kernel and bias), the frozen LayerNorm substitute (gamma/s as the scale
of a centring affine map), learnable temperatures t (not their logarithm). What only training
reads (EReg thresholds and strengths) is returned apart. Kernels become PyTorch's [out, in].
See docs/export.md for the names and the algebra.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import jax.numpy as jnp
import numpy as np

from aero_jax.config import ConfigError, ModelConfig
from aero_jax.layers import LN_CALIBRATION, SPECTRAL_COLLECTION, spectral_sigma, weight_normalized
from aero_jax.model import STRENGTH_LOGITS, THRESHOLDS, temperatures

Tensors = Dict[str, np.ndarray]
# Kept float32 in a bfloat16 export (modeling_aero.FLOAT32_BUFFERS, the same names): a temperature divides every
# score, a residual scale multiplies the whole stream.
FLOAT32_TENSORS = ("temperature", "residual_scale", "slope")


def effective_kernel(linear_params, spectral_state, group_norm: str) -> np.ndarray:
    """The [in, out] kernel a Linear multiplies by in evaluation mode."""
    kernel = jnp.asarray(linear_params["kernel"], jnp.float32)
    if group_norm == "weight":
        kernel = weight_normalized(kernel, jnp.asarray(linear_params["scale"], jnp.float32))
    elif group_norm == "spectral":
        kernel = kernel / spectral_sigma(kernel, jnp.asarray(spectral_state["u"], jnp.float32))
    return np.asarray(kernel, np.float32)


def _folded_linear(c: ModelConfig, params, state, name: str, group: str, *,
                   divide_by: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """(weight [out, in], bias [out]) of one Linear as evaluation computes it, a missing bias as zeros,
    optionally divided by a scalar."""
    kernel = effective_kernel(params[name], (state or {}).get(name, {}), c.norm_of(group))
    bias = np.asarray(params[name].get("bias", np.zeros(kernel.shape[1], np.float32)), np.float32)
    return kernel.T / divide_by, bias / divide_by


def _folded_layer_norm(params, calibration, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, bias) of a LayerNorm; a frozen one's scale absorbs its calibrated 1/s."""
    scale = np.asarray(params[name]["scale"], np.float32)
    if calibration is not None:
        if name not in calibration:
            raise ConfigError(f"the frozen LayerNorm {name} has no calibrated scale; accepted: a checkpoint written "
                              f"by aero-ln-substitute")
        scale = scale / np.float32(np.asarray(calibration[name]["std"]))
    return scale, np.asarray(params[name]["bias"], np.float32)


def _sub(tree: Optional[dict], *path: str) -> Optional[dict]:
    for key in path:
        if tree is None:
            return None
        tree = tree.get(key)
    return tree


def _block_tensors(c: ModelConfig, params, model_state, layer: int, global_slope) -> Iterator[Tuple[str, np.ndarray]]:
    block = params[f"block_{layer}"]
    spectral = _sub(model_state, SPECTRAL_COLLECTION, f"block_{layer}")
    calibration = (_sub(model_state, LN_CALIBRATION, f"block_{layer}") or {}) if c.ln_frozen else None
    prefix = f"h.{layer}"
    if c.ln_attn:
        yield from zip((f"{prefix}.ln_attn.weight", f"{prefix}.ln_attn.bias"),
                       _folded_layer_norm(block, calibration, "ln_attn"))
    attn, attn_state = block["attn"], _sub(spectral, "attn")
    D = c.d_model
    if c.qk_fused:
        weight, bias = _folded_linear(c, attn, attn_state, "qk", "qk")
        projections = {"q_proj": (weight[:D], bias[:D]), "k_proj": (weight[D:], bias[D:])}
    else:
        projections = {"q_proj": _folded_linear(c, attn, attn_state, "query", "qk"),
                       "k_proj": _folded_linear(c, attn, attn_state, "key", "qk")}
    projections["v_proj"] = _folded_linear(c, attn, attn_state, "value", "v")
    projections["o_proj"] = _folded_linear(c, attn, attn_state, "out", "o")
    for name, (weight, bias) in projections.items():
        yield f"{prefix}.attn.{name}.weight", weight
        yield f"{prefix}.attn.{name}.bias", bias
    if c.learnable_temperature:
        yield f"{prefix}.attn.temperature", np.asarray(temperatures(attn, c), np.float32)
    if not c.has_ffn(layer):
        return
    if c.ln_ffn:
        yield from zip((f"{prefix}.ln_ffn.weight", f"{prefix}.ln_ffn.bias"),
                       _folded_layer_norm(block, calibration, "ln_ffn"))
    ffn, ffn_state = block["ffn"], _sub(spectral, "ffn")
    alpha = float(np.asarray(block["ffn_alpha"])) if c.ffn_scaling else 1.0
    if c.ffn_fused:
        linears = {"fused": _folded_linear(c, ffn, ffn_state, "fused", "ffn", divide_by=alpha)}
    else:
        linears = {"fc_in": _folded_linear(c, ffn, ffn_state, "fc_in", "ffn"),
                   "fc_out": _folded_linear(c, ffn, ffn_state, "fc_out", "ffn", divide_by=alpha)}
    for name, (weight, bias) in linears.items():
        yield f"{prefix}.ffn.{name}.weight", weight
        yield f"{prefix}.ffn.{name}.bias", bias
    if c.activation in ("leaky_relu", "learnable_leaky_relu"):
        per_layer = c.activation == "learnable_leaky_relu" and c.leaky_slope_scope == "per_layer"
        slope = ffn["leaky_slope"] if per_layer else global_slope
        yield f"{prefix}.ffn.slope", np.asarray(slope, np.float32).reshape(())
    if c.ffn_scaling:
        yield f"{prefix}.residual_scale", np.asarray(block["ffn_beta"], np.float32).reshape(())


def plain_tensors(c: ModelConfig, params, model_state=None) -> Tensors:
    """The folded weights of the AERO PyTorch layout (modeling_aero.py), float32, PyTorch [out, in] kernels."""
    global_slope = c.leaky_slope
    if c.activation == "learnable_leaky_relu" and c.leaky_slope_scope == "global":
        global_slope = params["leaky_slope"]
    out = {"wte.weight": np.asarray(params["wte"]["embedding"], np.float32),
           "wpe.weight": np.asarray(params["wpe"], np.float32)}
    for layer in range(c.num_layers):
        out.update(_block_tensors(c, params, model_state, layer, global_slope))
    if c.ln_final:
        calibration = (_sub(model_state, LN_CALIBRATION) or {}) if c.ln_frozen else None
        out["ln_f.weight"], out["ln_f.bias"] = _folded_layer_norm(params, calibration, "ln_final")
    return out


def training_extras(c: ModelConfig, params) -> Tensors:
    """What only training reads: the EReg thresholds [L, H] (and per-head strength logits)."""
    return {name: np.asarray(params[name], np.float32) for name in (THRESHOLDS, STRENGTH_LOGITS) if name in params}
