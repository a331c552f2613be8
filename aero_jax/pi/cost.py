"""The PI cost of one forward pass, from the model config (method file, sections 6 and 12).

Communication (GB) and latency (minutes) are linear in a few workload features, with
non-negative coefficients fitted to the papers' SecretFlow rows (`coefficients.json`, refit with
`python -m aero_jax.pi.fit`):

- softmax elements (L H T^2),
- LayerNorm and ReLU elements together (n_LN T d + n_ReLU T d_ff): in every published row the
  two appear together, so the data cannot tell their per-element costs apart,
- GELU elements (n_GELU T d_ff),
- linear FLOPs (FFN, attention projections and the T x T attention products),
- embedding and LM-head FLOPs (2 T d V).

Leaky ReLU counts as ReLU. Parameter-only work (weight and spectral norm, temperatures) is done
once, offline, and costs nothing per inference.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Dict, Optional, Tuple

from aero_jax import flops, presets
from aero_jax.config import ModelConfig

COEFFICIENTS_FILE = pathlib.Path(__file__).with_name("coefficients.json")
CALIBRATION_FILE = pathlib.Path(__file__).with_name("calibration.json")
FEATURES = ("softmax_elements", "layernorm_relu_elements", "gelu_elements", "linear_flops", "head_flops")
BASELINE = "SM+LN+G"


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one forward pass over T tokens computes, in the terms the cost model needs."""

    nonlinear_ops: Dict[str, Tuple[int, int, int]]  # name -> (count, rows, cols), as "SM: 144 x R^{128x128}"
    ffn_flops: float
    attn_flops: float
    head_flops: float

    def elements(self, name: str) -> int:
        count, rows, cols = self.nonlinear_ops.get(name, (0, 0, 0))
        return count * rows * cols

    def features(self) -> Dict[str, float]:
        return {
            "softmax_elements": self.elements("SM"),
            "layernorm_relu_elements": self.elements("LN") + self.elements("R") + self.elements("LR"),
            "gelu_elements": self.elements("G"),
            "linear_flops": self.ffn_flops + self.attn_flops,
            "head_flops": self.head_flops,
        }

    def notation(self) -> str:
        """The papers' notation, e.g. 'SM: 144 x R^{128x128}, LN: 24 x R^{128x768}'."""
        return ", ".join(f"{name}: {count} x R^{{{rows}x{cols}}}"
                         for name, (count, rows, cols) in self.nonlinear_ops.items() if count)


_ACTIVATION_OPS = {"gelu": "G", "relu": "R", "leaky_relu": "LR", "learnable_leaky_relu": "LR"}


def nonlinear_ops(c: ModelConfig, seq_len: int) -> Dict[str, Tuple[int, int, int]]:
    """Softmax, LayerNorm and activation maps of one forward pass, from the config."""
    T, L = seq_len, c.num_layers
    ffn_count = sum(c.has_ffn(layer) for layer in range(L))
    ops = {"SM": (L * c.num_heads, T, T)}
    # The papers count the LayerNorms inside blocks (LN2 only where a block has an FFN); the
    # final LayerNorm is left out, as in their tables (its cost falls into the fitted head term).
    layer_norms = 0 if c.ln_frozen else L * int(c.ln_attn) + ffn_count * int(c.ln_ffn)  # frozen: linear
    if layer_norms:
        ops["LN"] = (layer_norms, T, c.d_model)
    op = _ACTIVATION_OPS.get(c.activation)
    if op and ffn_count:
        ops[op] = (ffn_count, T, c.d_ff)
    return ops


def workload(c: ModelConfig, seq_len: Optional[int] = None) -> Workload:
    T = seq_len or c.max_len
    return Workload(nonlinear_ops(c, T), flops.ffn_flops(c, T), flops.attention_flops(c, T),
                    2 * T * c.d_model * c.vocab_size)


def load_coefficients(path: pathlib.Path = COEFFICIENTS_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def predict(w: Workload, coefficients: Optional[dict] = None) -> Dict[str, float]:
    """Communication (GB) and latency (minutes) of a workload under the fitted model."""
    coefficients = coefficients or load_coefficients()
    features = w.features()
    return {target: sum(coefficients[target][f] * features[f] for f in FEATURES)
            for target in ("comm_gb", "latency_min")}


def pi_cost(c: ModelConfig, seq_len: Optional[int] = None, *, name: str = "") -> dict:
    """The cost report of one architecture at one size, with savings against SM+LN+G of that size."""
    T = seq_len or c.max_len
    w = workload(c, T)
    cost = predict(w)
    size = {f: getattr(c, f) for f in ("num_layers", "num_heads", "d_model", "d_ff", "vocab_size")}
    baseline = predict(workload(presets.model_config(BASELINE, **size, max_len=T), T))
    return {
        "arch": name, "seq_len": T, **size,
        "nonlinear_ops": w.notation(), "ffn_flops": w.ffn_flops, "attn_flops": w.attn_flops,
        "head_flops": w.head_flops, **cost,
        "comm_saving": baseline["comm_gb"] / cost["comm_gb"],
        "latency_saving": baseline["latency_min"] / cost["latency_min"],
        "baseline": {"arch": BASELINE, **baseline},
    }
