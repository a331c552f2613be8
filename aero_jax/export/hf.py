"""The stock Hugging Face GPT-2 layout (GPT2LMHeadModel), both ways, for the architectures GPT-2 can express.

GPT-2 is pre-LayerNorm attention and a two-matrix FFN in every layer, with biases everywhere,
a final LayerNorm and a tied LM head. A folded AERO model fits it when it keeps every
LayerNorm (not the frozen substitute), every FFN unfused and unscaled, no temperatures, and an
activation that `transformers.activations.ACT2FN` names; weight and spectral norm fold away, and a
missing bias is a zero bias. Conv1D kernels are [in, out]; `c_attn` is q | k | v.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from aero_jax import presets
from aero_jax.config import NORM_GROUPS, ConfigError, ModelConfig

HF_LEAKY_SLOPE = 0.01  # ACT2FN["leaky_relu"] is torch.nn.LeakyReLU() with its default slope
IGNORED_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks that older checkpoints saved


def gpt2_blocker(c: ModelConfig) -> Optional[str]:
    """The field that keeps GPT-2 from expressing this architecture exactly ('field=value'), or None."""
    for field in ("ln_attn", "ln_ffn", "ln_final"):
        if not getattr(c, field):
            return f"{field}=False (GPT-2 has every LayerNorm)"
    checks = (("ln_frozen", True, "the LayerNorm substitute is not a LayerNorm"),
              ("learnable_temperature", True, "GPT-2 has no attention temperatures"),
              ("ffn_scaling", True, "GPT-2's residual has no beta"),
              ("ffn_fused", True, "GPT-2's FFN has two matrices"))
    for field, value, why in checks:
        if getattr(c, field) == value:
            return f"{field}={value} ({why})"
    if not all(c.has_ffn(layer) for layer in range(c.num_layers)):
        return f"ffn_layers={c.ffn_layers} (GPT-2 has an FFN in every layer)"
    if c.activation == "learnable_leaky_relu":
        return f"activation={c.activation} (GPT-2's leaky_relu has a fixed slope, {HF_LEAKY_SLOPE})"
    if c.activation == "leaky_relu" and c.leaky_slope != HF_LEAKY_SLOPE:
        return f"leaky_slope={c.leaky_slope} (GPT-2's leaky_relu has slope {HF_LEAKY_SLOPE})"
    return None


def gpt2_activation(c: ModelConfig) -> str:
    return {"gelu": "gelu_new" if c.gelu_form == "tanh" else "gelu", "relu": "relu", "identity": "linear",
            "leaky_relu": "leaky_relu"}[c.activation]


def gpt2_config(c: ModelConfig, *, eot_id: int) -> dict:
    """config.json of a GPT2LMHeadModel with this architecture (no dropout, tied head); the end-of-text id is its
    bos, eos and pad id."""
    return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=c.vocab_size, n_positions=c.max_len,
                n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads, n_inner=c.d_ff,
                activation_function=gpt2_activation(c), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                layer_norm_epsilon=c.ln_epsilon, initializer_range=c.init_std, scale_attn_weights=True,
                tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                use_cache=True)


def gpt2_tensors(plain: Dict[str, np.ndarray], c: ModelConfig) -> Dict[str, np.ndarray]:
    """The plain AERO tensors (fold.plain_tensors) renamed and transposed into GPT2LMHeadModel's layout."""
    out = {"transformer.wte.weight": plain["wte.weight"], "transformer.wpe.weight": plain["wpe.weight"],
           "transformer.ln_f.weight": plain["ln_f.weight"], "transformer.ln_f.bias": plain["ln_f.bias"]}
    for layer in range(c.num_layers):
        ours, theirs = f"h.{layer}", f"transformer.h.{layer}"
        attn = [plain[f"{ours}.attn.{name}_proj.weight"].T for name in "qkv"]
        out[f"{theirs}.attn.c_attn.weight"] = np.concatenate(attn, axis=1)
        out[f"{theirs}.attn.c_attn.bias"] = np.concatenate([plain[f"{ours}.attn.{n}_proj.bias"] for n in "qkv"])
        pairs = (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "ffn.fc_in"), ("mlp.c_proj", "ffn.fc_out"))
        for hf_name, name in pairs:
            out[f"{theirs}.{hf_name}.weight"] = plain[f"{ours}.{name}.weight"].T
            out[f"{theirs}.{hf_name}.bias"] = plain[f"{ours}.{name}.bias"]
        for hf_name, name in (("ln_1", "ln_attn"), ("ln_2", "ln_ffn")):
            for kind in ("weight", "bias"):
                out[f"{theirs}.{hf_name}.{kind}"] = plain[f"{ours}.{name}.{kind}"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# -- import ---------------------------------------------------------------------------------------

# GPT-2's activation_function -> the preset of that architecture, and the fields that pin it down.
_IMPORTED_ACTIVATIONS = {"gelu_new": ("SM+LN+G", dict(gelu_form="tanh")),
                         "gelu_pytorch_tanh": ("SM+LN+G", dict(gelu_form="tanh")),
                         "gelu": ("SM+LN+G", dict(gelu_form="exact")), "relu": ("SM+LN+R", {}),
                         "linear": ("SM+LN", {}), "leaky_relu": ("SM+LN+LReLU", dict(leaky_slope=HF_LEAKY_SLOPE))}


def model_config_from_gpt2(hf_config: dict, source: str) -> Tuple[str, ModelConfig]:
    """(preset, ModelConfig) of a GPT-2 config.json: SM+LN+G (or its ReLU, identity, leaky forms) with GPT-2's
    blocks (every bias, 1/sqrt(2L) init)."""
    if hf_config.get("model_type") != "gpt2":
        raise ConfigError(f"{source} describes model_type={hf_config.get('model_type')!r}; accepted: 'gpt2' "
                          f"(a GPT2LMHeadModel checkpoint)")
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size", "n_positions") if k not in hf_config]
    if missing:
        raise ConfigError(f"{source}: config.json lacks {', '.join(missing)}; accepted: a GPT2Config")
    unusual = {k: v for k, v in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                                 ("add_cross_attention", False))
               if k in hf_config and hf_config[k] != v}
    if unusual:
        raise ConfigError(f"{source}: {', '.join(f'{k}={hf_config[k]}' for k in unusual)} is not imported; accepted: "
                          f"GPT-2's own attention ({', '.join(f'{k}={v}' for k, v in unusual.items())})")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _IMPORTED_ACTIVATIONS:
        raise ConfigError(f"{source}: activation_function={activation!r} is not imported; accepted: "
                          f"{', '.join(_IMPORTED_ACTIVATIONS)}")
    preset, fields = _IMPORTED_ACTIVATIONS[activation]
    d_model = hf_config["n_embd"]
    return preset, presets.model_config(
        preset, num_layers=hf_config["n_layer"], num_heads=hf_config["n_head"], d_model=d_model,
        d_ff=hf_config.get("n_inner") or 4 * d_model, vocab_size=hf_config["vocab_size"],
        max_len=hf_config["n_positions"], ln_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
        init_std=hf_config.get("initializer_range", 0.02), bias_groups=NORM_GROUPS, residual_init_scaling=True,
        **fields)


def _expected_shapes(c: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    D, F = c.d_model, c.d_ff
    shapes = {"wte.weight": (c.vocab_size, D), "wpe.weight": (c.max_len, D), "ln_f.weight": (D,), "ln_f.bias": (D,)}
    for layer in range(c.num_layers):
        for name, shape in (("ln_1.weight", (D,)), ("ln_1.bias", (D,)), ("attn.c_attn.weight", (D, 3 * D)),
                            ("attn.c_attn.bias", (3 * D,)), ("attn.c_proj.weight", (D, D)), ("attn.c_proj.bias", (D,)),
                            ("ln_2.weight", (D,)), ("ln_2.bias", (D,)), ("mlp.c_fc.weight", (D, F)),
                            ("mlp.c_fc.bias", (F,)), ("mlp.c_proj.weight", (F, D)), ("mlp.c_proj.bias", (D,))):
            shapes[f"h.{layer}.{name}"] = shape
    return shapes


def gpt2_to_params(tensors: Dict[str, np.ndarray], c: ModelConfig, source: str) -> dict:
    """AeroLM parameters (every bias) from GPT2LMHeadModel tensors, checked against the config."""
    named = {k.removeprefix("transformer."): np.asarray(v, np.float32) for k, v in tensors.items()
             if not k.endswith(IGNORED_GPT2_BUFFERS)}
    head = named.pop("lm_head.weight", None)
    expected = _expected_shapes(c)
    missing, unexpected = sorted(set(expected) - set(named)), sorted(set(named) - set(expected))
    wrong = [f"{k} {named[k].shape} (config: {expected[k]})" for k in expected if k in named
             and named[k].shape != expected[k]]
    if missing or unexpected or wrong:
        problems = "; ".join(f"{what}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                             for what, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("sizes disagree", wrong)) if items)
        raise ConfigError(f"{source} is not a GPT-2 checkpoint of its config.json ({problems}); accepted: the "
                          f"model.safetensors of a GPT2LMHeadModel and its config.json")
    if head is not None and not np.array_equal(head, named["wte.weight"]):
        raise ConfigError(f"{source} has an untied lm_head.weight; accepted: GPT-2 with the head tied to wte")
    params = {"wte": {"embedding": named["wte.weight"]}, "wpe": named["wpe.weight"],
              "ln_final": {"scale": named["ln_f.weight"], "bias": named["ln_f.bias"]}}
    for layer in range(c.num_layers):
        params[f"block_{layer}"] = _block_params({k.removeprefix(f"h.{layer}."): v for k, v in named.items()
                                                  if k.startswith(f"h.{layer}.")})
    return params


def _block_params(h: Dict[str, np.ndarray]) -> dict:
    """One block's AeroLM parameters from its GPT-2 tensors (names without the 'h.<layer>.' prefix)."""
    qkv_kernels, qkv_biases = np.split(h["attn.c_attn.weight"], 3, axis=1), np.split(h["attn.c_attn.bias"], 3)
    attn = {name: {"kernel": kernel, "bias": bias}
            for name, kernel, bias in zip(("query", "key", "value"), qkv_kernels, qkv_biases)}
    attn["out"] = {"kernel": h["attn.c_proj.weight"], "bias": h["attn.c_proj.bias"]}
    return {"ln_attn": {"scale": h["ln_1.weight"], "bias": h["ln_1.bias"]}, "attn": attn,
            "ln_ffn": {"scale": h["ln_2.weight"], "bias": h["ln_2.bias"]},
            "ffn": {"fc_in": {"kernel": h["mlp.c_fc.weight"], "bias": h["mlp.c_fc.bias"]},
                    "fc_out": {"kernel": h["mlp.c_proj.weight"], "bias": h["mlp.c_proj.bias"]}}}
