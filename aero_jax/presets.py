"""Named architectures (the papers' names) and sizes, kept apart so any preset runs at any size.

    >>> from aero_jax import presets
    >>> cfg = presets.model_config("EReg(SM(t)+ScFuFFN)", size="gpt2-small", max_len=256)
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

from aero_jax.config import ConfigError, ModelConfig, check_fields

SIZES: Dict[str, dict] = {
    # GPT-2 small with the GPT-2 BPE vocabulary and the papers' shortest context.
    "gpt2-small": dict(num_layers=12, num_heads=12, d_model=768, d_ff=3072, vocab_size=50257, max_len=128),
    "gpt2-small-18": dict(num_layers=18, num_heads=12, d_model=768, d_ff=3072, vocab_size=50257, max_len=128),
    # For tests and quick experiments on a CPU: byte vocabulary plus end-of-text.
    "tiny": dict(num_layers=2, num_heads=2, d_model=32, d_ff=128, vocab_size=257, max_len=32),
}

# The blocks of the released code (Nandan91/relu-revival-normfree, model_utils.py), for every preset:
# normal(0.02) kernels without GPT-2's 1/sqrt(2L) residual scaling, a bias on the QK projection only
# (V, output and FFN biases are frozen zeros), and the exact (erf) GELU of `ACT2FN["gelu"]`.
_RELEASED_BLOCKS = dict(residual_init_scaling=False, bias_groups=("qk",), gelu_form="exact")
_NO_LN = dict(ln_attn=False, ln_ffn=False, ln_final=False)
# ReLU's Revival's norm-free rows replace only the blocks: GPT-2's final LayerNorm (ln_f) stays.
_NORM_FREE_BLOCKS = dict(ln_attn=False, ln_ffn=False, ln_final=True)
_RELEASED_FIXED_SLOPE = 0.1  # scripts/experiments/train_normfree.sh: model.lrelu_neg_slope=1e-1
_SM = dict(_NO_LN, activation="identity")
_SCFFN = dict(_SM, ffn_scaling=True)
_SCFUFFN = dict(_SCFFN, ffn_fused=True)
_TEMPERATURE = dict(learnable_temperature=True, temperature_init=1e-2)  # the papers (CodeParrot)
# The rows of the method file's normalization table (section 5) and the groups each one covers.
_NORM_TABLE_GROUPS = {
    "QK": ("qk",),
    "FFN": ("ffn",),
    "QK+FFN": ("qk", "ffn"),
    "QKV+FFN": ("qk", "v", "ffn"),
    "QKVO+FFN": ("qk", "v", "o", "ffn"),
}


# Deep-FFN pruning of the published rows: FFNs kept in the first k layers (14 of 18 in the L=18
# table of arXiv 2410.13060v1, 11 in its Languini rows, 8 in its SOTA row), beside the first half.
PRUNED_FFN_COUNTS = (8, 11, 14)


def _first_half_ffn(num_layers: int) -> Tuple[int, ...]:
    """Deep-FFN pruning as in the papers (6 of 12 layers): keep FFNs in the first half."""
    return tuple(range(max(1, num_layers // 2)))


def _first_ffn(count: int):
    """FFNs in the first `count` layers (all of them in a model with fewer layers)."""
    return lambda num_layers: tuple(range(min(count, num_layers)))


def _base_presets() -> Dict[str, dict]:
    base = {
        "SM+LN+G": dict(activation="gelu"),
        "SM+LN+R": dict(activation="relu"),
        "SM+LN": dict(activation="identity"),
        "SM+G": dict(_NORM_FREE_BLOCKS, activation="gelu"),
        "SM+R": dict(_NORM_FREE_BLOCKS, activation="relu"),
        "SM": dict(_SM),
        "SM+LN+LReLU": dict(activation="leaky_relu", leaky_slope=_RELEASED_FIXED_SLOPE),
        "SM+LReLU": dict(_NORM_FREE_BLOCKS, activation="leaky_relu", leaky_slope=_RELEASED_FIXED_SLOPE),
        "SM+LN+LReLU(learnable)": dict(activation="learnable_leaky_relu"),
        "SM+LReLU(learnable)": dict(_NORM_FREE_BLOCKS, activation="learnable_leaky_relu"),
        "SM+LN+LReLU(learnable per layer)": dict(activation="learnable_leaky_relu", leaky_slope_scope="per_layer"),
        "SM+LReLU(learnable per layer)": dict(_NORM_FREE_BLOCKS, activation="learnable_leaky_relu",
                                              leaky_slope_scope="per_layer"),
        "SM+ScFFN": dict(_SCFFN),
        "SM+ScFuFFN": dict(_SCFUFFN),
        "SM+ScFuFFN[FFN:L/2]": dict(_SCFUFFN, ffn_layers=_first_half_ffn),
        "SM(t)+ScFuFFN": dict(_SCFUFFN, **_TEMPERATURE),
        "SM(t)+ScFuFFN[FFN:L/2]": dict(_SCFUFFN, ffn_layers=_first_half_ffn, **_TEMPERATURE),
    }
    for count in PRUNED_FFN_COUNTS:
        base[f"SM+ScFuFFN[FFN:{count}]"] = dict(_SCFUFFN, ffn_layers=_first_ffn(count))
        base[f"SM(t)+ScFuFFN[FFN:{count}]"] = dict(_SCFUFFN, ffn_layers=_first_ffn(count), **_TEMPERATURE)
    for label, groups in _NORM_TABLE_GROUPS.items():
        base[f"SM+WNorm({label})"] = dict(_SM, weight_norm=groups)
        base[f"SM+SNorm({label})"] = dict(_SM, spectral_norm=groups)
    return base


def _all_presets() -> Dict[str, dict]:
    base = _base_presets()
    regularized = {f"EReg({name})": dict(fields, entropy_reg=True) for name, fields in base.items()}
    return {**base, **regularized}


_PRESETS = _all_presets()


def names() -> Tuple[str, ...]:
    """Every preset name, base architectures first, then their EReg(...) forms."""
    return tuple(_PRESETS)


def model_config(name: str, size: str = "gpt2-small", **overrides) -> ModelConfig:
    """The ModelConfig of a preset at a size; keyword overrides win over both.

    Size fields: num_layers, num_heads, d_model, d_ff, vocab_size, max_len.
    """
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(names())}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; accepted: {', '.join(SIZES)}")
    check_fields(overrides)
    fields = {**SIZES[size], **_RELEASED_BLOCKS, **_PRESETS[name], **overrides}
    resolved = {k: (v(fields["num_layers"]) if callable(v) else v) for k, v in fields.items()}
    return ModelConfig(**resolved)


def slug(name: str) -> str:
    """A shell-friendly spelling of a preset name: 'EReg(SM(t)+ScFuFFN)' -> 'ereg_sm_t_scfuffn'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def resolve(name_or_slug: str) -> str:
    """The preset name for a name or its slug (config variants use slugs)."""
    by_slug = {slug(n): n for n in names()}
    if name_or_slug in _PRESETS:
        return name_or_slug
    if name_or_slug in by_slug:
        return by_slug[name_or_slug]
    raise ConfigError(f"unknown preset {name_or_slug!r}; accepted: {', '.join(names())} (or their slugs, e.g. "
                      f"{slug(names()[0])})")
