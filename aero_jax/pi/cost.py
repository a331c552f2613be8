"""The PI cost of one forward pass, from the model config (method file, sections 6 and 12).

A structural model of a 2PC engine over a WAN, fitted to the papers' SecretFlow rows
(`calibration.json`; coefficients in `coefficients.json`, refit with `python -m aero_jax.pi.fit`):

- communication (GB) = sum of per-element costs: softmax elements (L H T^2), LayerNorm elements
  (n_LN T d), ReLU elements (n_ReLU T d_ff; leaky ReLU counts as ReLU), GELU elements; the linear
  layers' weight elements (sum d_in d_out) and input/output elements (sum T (d_in + d_out)), as in
  HE-based matrix products; and the embedding/LM-head FLOPs (2 T d V);
- latency (minutes) = the same terms, each with its own time per unit (bandwidth and local
  compute), plus round trips of the published 80 ms WAN: a fixed number per LayerNorm, per
  activation layer (ReLU, GELU) and per matrix product (projections, the two T x T products of
  each layer, FFN matrices, LM head).

Every term grows with the depth and the context length the way the workload does, so the model
extrapolates to other sizes; docs/pi_cost.md gives its fit and leave-one-out errors per row.
Parameter-only work (weight and spectral norm, temperatures) is done once, offline, and costs
nothing per inference.
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
ROUND_TRIP_MIN = 0.080 / 60  # the papers' WAN: 100 Mbps, 80 ms
COMM_FEATURES = ("softmax_elements", "layernorm_elements", "relu_elements", "gelu_elements", "weight_elements",
                 "io_elements", "head_flops")
# No round-trip term per softmax layer: it moves with the per-layer matrix products, and with it
# the held-out latency error grew from 9.9% to 12.6% (docs/pi_cost.md).
LATENCY_FEATURES = COMM_FEATURES + ("layernorm_round_trips", "activation_round_trips", "matmul_round_trips")
TARGET_FEATURES = {"comm_gb": COMM_FEATURES, "latency_min": LATENCY_FEATURES}
BASELINE = "SM+LN+G"


@dataclasses.dataclass(frozen=True)
class LinearLayers:
    """The matrix products one forward pass applies to activations (the LM head apart)."""

    weight_elements: float  # sum of d_in * d_out
    io_elements: float  # sum of T * (d_in + d_out)
    matmuls: int  # products, the two T x T ones of each layer and the LM head included


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one forward pass over T tokens computes, in the terms the cost model needs."""

    nonlinear_ops: Dict[str, Tuple[int, int, int]]  # name -> (count, rows, cols), as "SM: 144 x R^{128x128}"
    ffn_flops: float
    attn_flops: float
    head_flops: float
    linear: LinearLayers

    def elements(self, name: str) -> int:
        count, rows, cols = self.nonlinear_ops.get(name, (0, 0, 0))
        return count * rows * cols

    def features(self) -> Dict[str, float]:
        activation_layers = sum(self.nonlinear_ops.get(op, (0, 0, 0))[0] for op in ("R", "LR", "G"))
        return {
            "softmax_elements": self.elements("SM"),
            "layernorm_elements": self.elements("LN"),
            "relu_elements": self.elements("R") + self.elements("LR"),
            "gelu_elements": self.elements("G"),
            "weight_elements": self.linear.weight_elements,
            "io_elements": self.linear.io_elements,
            "head_flops": self.head_flops,
            "layernorm_round_trips": ROUND_TRIP_MIN * self.nonlinear_ops.get("LN", (0, 0, 0))[0],
            "activation_round_trips": ROUND_TRIP_MIN * activation_layers,
            "matmul_round_trips": ROUND_TRIP_MIN * self.linear.matmuls,
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
    # final LayerNorm is left out, as in every row of their tables.
    layer_norms = 0 if c.ln_frozen else L * int(c.ln_attn) + ffn_count * int(c.ln_ffn)  # frozen: linear
    if layer_norms:
        ops["LN"] = (layer_norms, T, c.d_model)
    op = _ACTIVATION_OPS.get(c.activation)
    if op and ffn_count:
        ops[op] = (ffn_count, T, c.d_ff)
    return ops


def linear_layers(seq_len: int, *, num_layers: int, d_model: int, attention_projections: int,
                  ffn_shapes) -> LinearLayers:
    """Weight and input/output elements and products of the attention and FFN matrices.

    `ffn_shapes` lists each FFN matrix (d_in, d_out) of the whole model.
    """
    shapes = [(d_model, d_model)] * (attention_projections * num_layers) + list(ffn_shapes)
    return LinearLayers(weight_elements=sum(i * o for i, o in shapes),
                        io_elements=sum(seq_len * (i + o) for i, o in shapes),
                        matmuls=len(shapes) + 2 * num_layers + 1)


def ffn_shapes(c: ModelConfig):
    per_layer = [(c.d_model, c.d_model)] if c.ffn_fused else [(c.d_model, c.d_ff), (c.d_ff, c.d_model)]
    return [shape for layer in range(c.num_layers) if c.has_ffn(layer) for shape in per_layer]


def workload(c: ModelConfig, seq_len: Optional[int] = None) -> Workload:
    T = seq_len or c.max_len
    linear = linear_layers(T, num_layers=c.num_layers, d_model=c.d_model, attention_projections=4,
                           ffn_shapes=ffn_shapes(c))
    return Workload(nonlinear_ops(c, T), flops.ffn_flops(c, T), flops.attention_flops(c, T),
                    2 * T * c.d_model * c.vocab_size, linear)


def load_coefficients(path: pathlib.Path = COEFFICIENTS_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def predict(w: Workload, coefficients: Optional[dict] = None) -> Dict[str, float]:
    """Communication (GB) and latency (minutes) of a workload under the fitted model."""
    coefficients = coefficients or load_coefficients()
    features = w.features()
    return {target: sum(coefficients[target][f] * features[f] for f in names)
            for target, names in TARGET_FEATURES.items()}


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
