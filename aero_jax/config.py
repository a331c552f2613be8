"""The model configuration: one frozen, validated dataclass that describes an architecture.

Every AERO switch is a field here and nowhere else; modules, FLOPs counting, reports and export
all read this one object. Invalid combinations fail at construction with one line naming the
field and the accepted values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

from aero_jax.errors import ConfigError  # noqa: F401  (re-exported: most modules import it from here)

ACTIVATIONS = ("gelu", "relu", "leaky_relu", "learnable_leaky_relu", "identity")
SLOPE_SCOPES = ("global", "per_layer")
GELU_FORMS = ("exact", "tanh")
TEMPERATURE_PARAMS = ("log", "raw")
NORM_GROUPS = ("qk", "v", "o", "ffn")
# Compute dtypes. float16 is the papers' mixed precision (PyTorch AMP): float32 master weights, float16 matrix
# products and attention scores, float32 softmax, entropy and LayerNorm, and a dynamic loss scale in training.
DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
PENALTY_REDUCTIONS = ("per_position_sum", "head_mean")
REMAT_CHOICES = ("none", "block", "dots")


def _fail(field: str, value: Any, accepted: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid; accepted: {accepted}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A GPT-2 style decoder and its AERO modifications (see docs/architecture.md)."""

    # Size: independent of the architecture, so any preset runs at any size.
    num_layers: int = 12
    num_heads: int = 12
    d_model: int = 768
    d_ff: int = 3072
    vocab_size: int = 50257
    max_len: int = 128

    # LayerNorm at each site: before attention (LN1), before the FFN (LN2), after the last block.
    ln_attn: bool = True
    ln_ffn: bool = True
    ln_final: bool = True
    ln_epsilon: float = 1e-5
    ln_frozen: bool = False  # every LayerNorm replaced by its calibrated affine substitute (section 9)

    # Linear layers: which groups (of NORM_GROUPS) have a trainable bias; GPT-2 init std, with the
    # attention-output and FFN-output kernels scaled by 1/sqrt(2L) when residual_init_scaling.
    bias_groups: Tuple[str, ...] = NORM_GROUPS
    residual_init_scaling: bool = True
    qk_fused: bool = False  # one [d, 2d] QK projection, as the released code: norms act on [Wq | Wk]

    # Feed-forward network.
    activation: str = "gelu"
    gelu_form: str = "tanh"  # tanh (GPT-2's gelu_new) | exact (erf, the released code's "gelu")
    leaky_slope: float = 0.01  # fixed slope, or initial slope when learnable
    leaky_slope_scope: str = "global"  # learnable slope: one for the model, or one per layer
    ffn_fused: bool = False  # ScFuFFN: a single d x d matrix; identity activation only
    ffn_layers: Optional[Tuple[int, ...]] = None  # layers that keep an FFN; None keeps all
    ffn_scaling: bool = False  # ScFFN: X_out = beta_l * X_sa + FFN(X_sa) / alpha_l
    ffn_alpha_init: float = 1.0
    ffn_beta_init: float = 1.0

    # Reparameterised linear layers, by group (any of NORM_GROUPS).
    weight_norm: Tuple[str, ...] = ()
    spectral_norm: Tuple[str, ...] = ()
    spectral_norm_iters: int = 1  # power-iteration steps per training forward pass

    # SM(t): learnable attention temperature per head and query position, kept positive:
    # t = exp(p) ("log") or t = max(p, TEMPERATURE_FLOOR) with p learned directly ("raw").
    learnable_temperature: bool = False
    temperature_init: float = 1.0
    temperature_param: str = "log"
    temperature_scale: float = 1.0  # multiplies every learned t: an intervention at fixed weights (aero-study)

    # Per-head attention entropy, sown as an intermediate; turn off for inference.
    sow_entropy: bool = True

    # EReg: entropy regularizer (method file, section 8).
    entropy_reg: bool = False
    ereg_weight: float = 1e-5  # lambda
    ereg_gamma: float = 0.2  # tolerance as a fraction of E_max = log T
    ereg_threshold_init: float = 0.5  # theta, as a fraction of E_max
    ereg_reduction: str = "per_position_sum"
    ereg_head_strengths: bool = False  # learnable per-head weights, normalised per layer
    ereg_rows: int = 128  # per_position_sum: lambda multiplies a sum over this many rows (released: 128)

    # Numerics.
    dtype: str = "float32"  # compute dtype (DTYPES); float16 trains with a dynamic loss scale
    param_dtype: str = "float32"
    init_std: float = 0.02
    remat: str = "none"  # recompute in the backward pass: none, block (everything), dots (all but weight matmuls)

    def __post_init__(self):
        if self.ffn_layers is not None:
            object.__setattr__(self, "ffn_layers", tuple(int(i) for i in self.ffn_layers))
        for name in ("weight_norm", "spectral_norm", "bias_groups"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(g for g in value.replace("+", ",").split(",") if g)
            object.__setattr__(self, name, tuple(value))
        _validate(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def has_ffn(self, layer: int) -> bool:
        return self.ffn_layers is None or layer in self.ffn_layers

    def norm_of(self, group: str) -> str:
        """How a group's (qk, v, o, ffn) kernels are reparameterised: weight, spectral or none."""
        return "weight" if group in self.weight_norm else "spectral" if group in self.spectral_norm else "none"

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed; unknown fields are refused by name."""
        check_fields(changes)
        return dataclasses.replace(self, **changes)


MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: seed 2**32 would silently repeat seed 0

# Fields that change the loss or the numerics but not the parameters: a run may resume with
# other values of these; any other difference is another architecture.
NON_ARCHITECTURE_FIELDS = ("ereg_weight", "ereg_gamma", "ereg_reduction", "ereg_rows", "sow_entropy", "dtype",
                           "spectral_norm_iters", "remat", "temperature_scale")


def architecture_differences(old: ModelConfig, new: ModelConfig):
    """[(field, old value, new value)] for every architecture field that differs."""
    return [(f, getattr(old, f), getattr(new, f)) for f in field_names()
            if f not in NON_ARCHITECTURE_FIELDS and getattr(old, f) != getattr(new, f)]


def field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ModelConfig))


def check_fields(changes: dict) -> None:
    unknown = sorted(set(changes) - set(field_names()))
    if unknown:
        raise ConfigError(
            f"unknown model config field(s) {', '.join(unknown)}; accepted: {', '.join(field_names())}"
        )


FLOAT_FIELDS = ("ln_epsilon", "leaky_slope", "ffn_alpha_init", "ffn_beta_init", "temperature_init",
                "temperature_scale", "ereg_weight", "ereg_gamma", "ereg_threshold_init", "init_std")


def _validate(c: ModelConfig) -> None:
    for name in ("num_layers", "num_heads", "d_model", "d_ff", "vocab_size", "max_len", "spectral_norm_iters",
                 "ereg_rows"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(name, value, "a positive integer")
    for name in FLOAT_FIELDS:
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(name, value, "a finite number")
    if not c.ln_epsilon > 0:
        _fail("ln_epsilon", c.ln_epsilon, "a positive number")
    if c.d_model % c.num_heads:
        _fail("num_heads", c.num_heads, f"a divisor of d_model={c.d_model}")
    if c.activation not in ACTIVATIONS:
        _fail("activation", c.activation, ", ".join(ACTIVATIONS))
    if c.gelu_form not in GELU_FORMS:
        _fail("gelu_form", c.gelu_form, ", ".join(GELU_FORMS))
    if c.temperature_param not in TEMPERATURE_PARAMS:
        _fail("temperature_param", c.temperature_param, ", ".join(TEMPERATURE_PARAMS))
    if c.leaky_slope_scope not in SLOPE_SCOPES:
        _fail("leaky_slope_scope", c.leaky_slope_scope, ", ".join(SLOPE_SCOPES))
    if c.ffn_fused and c.activation != "identity":
        _fail("ffn_fused", c.ffn_fused, "False unless activation='identity' (fusion needs a linear FFN)")
    if c.ffn_layers is not None:
        bad = [i for i in c.ffn_layers if not 0 <= i < c.num_layers]
        if bad or len(set(c.ffn_layers)) != len(c.ffn_layers):
            _fail("ffn_layers", c.ffn_layers, f"None or distinct layer indices in [0, {c.num_layers})")
    if c.ffn_scaling and c.ffn_alpha_init <= 0:
        _fail("ffn_alpha_init", c.ffn_alpha_init, "a positive number (the FFN output is divided by it)")
    for name in ("weight_norm", "spectral_norm", "bias_groups"):
        bad = [g for g in getattr(c, name) if g not in NORM_GROUPS]
        if bad:
            _fail(name, getattr(c, name), f"a subset of {', '.join(NORM_GROUPS)}")
    both = sorted(set(c.weight_norm) & set(c.spectral_norm))
    if both:
        _fail("spectral_norm", c.spectral_norm,
              f"groups without weight norm; {', '.join(both)} already has weight_norm")
    if not c.temperature_init > 0:
        _fail("temperature_init", c.temperature_init, "a positive number")
    if not 0 < c.temperature_scale < float("inf"):
        _fail("temperature_scale", c.temperature_scale, "a positive number")
    if not 0 <= c.ereg_gamma < 1:
        _fail("ereg_gamma", c.ereg_gamma, "a number in [0, 1)")
    if c.ereg_weight < 0:
        _fail("ereg_weight", c.ereg_weight, "a number >= 0")
    if c.ereg_reduction not in PENALTY_REDUCTIONS:
        _fail("ereg_reduction", c.ereg_reduction, ", ".join(PENALTY_REDUCTIONS))
    if c.entropy_reg and not c.sow_entropy:
        _fail("sow_entropy", c.sow_entropy, "True when entropy_reg=True (the penalty needs the entropies)")
    if c.dtype not in DTYPES:
        _fail("dtype", c.dtype, ", ".join(DTYPES))
    if c.param_dtype not in PARAM_DTYPES:
        _fail("param_dtype", c.param_dtype, ", ".join(PARAM_DTYPES))
    if c.dtype == "float16" and c.param_dtype != "float32":
        _fail("param_dtype", c.param_dtype, "float32 with dtype='float16' (float32 master weights, as the papers' "
              "mixed precision)")
    if c.init_std <= 0:
        _fail("init_std", c.init_std, "a positive number")
    if c.remat not in REMAT_CHOICES:
        _fail("remat", c.remat, ", ".join(REMAT_CHOICES))
