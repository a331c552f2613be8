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

_NO_LN = dict(ln_attn=False, ln_ffn=False, ln_final=False)
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


def _first_half_ffn(num_layers: int) -> Tuple[int, ...]:
    """Deep-FFN pruning as in the papers (6 of 12 layers): keep FFNs in the first half."""
    return tuple(range(max(1, num_layers // 2)))


def _base_presets() -> Dict[str, dict]:
    base = {
        "SM+LN+G": dict(activation="gelu"),
        "SM+LN+R": dict(activation="relu"),
        "SM+LN": dict(activation="identity"),
        "SM+G": dict(_NO_LN, activation="gelu"),
        "SM+R": dict(_NO_LN, activation="relu"),
        "SM": dict(_SM),
        "SM+LN+LReLU": dict(activation="leaky_relu"),
        "SM+LReLU": dict(_NO_LN, activation="leaky_relu"),
        "SM+LN+LReLU(learnable)": dict(activation="learnable_leaky_relu"),
        "SM+LReLU(learnable)": dict(_NO_LN, activation="learnable_leaky_relu"),
        "SM+LN+LReLU(learnable per layer)": dict(activation="learnable_leaky_relu", leaky_slope_scope="per_layer"),
        "SM+LReLU(learnable per layer)": dict(_NO_LN, activation="learnable_leaky_relu",
                                              leaky_slope_scope="per_layer"),
        "SM+ScFFN": dict(_SCFFN),
        "SM+ScFuFFN": dict(_SCFUFFN),
        "SM+ScFuFFN[FFN:L/2]": dict(_SCFUFFN, ffn_layers=_first_half_ffn),
        "SM(t)+ScFuFFN": dict(_SCFUFFN, **_TEMPERATURE),
        "SM(t)+ScFuFFN[FFN:L/2]": dict(_SCFUFFN, ffn_layers=_first_half_ffn, **_TEMPERATURE),
    }
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
    fields = {**SIZES[size], **_PRESETS[name], **overrides}
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
