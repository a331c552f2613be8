"""AERO language models in PyTorch: the whole family exported by aero-jax, from plain folded weights.

Depends on torch and safetensors only; this file is copied next to the weights (`aero-export`):

    from modeling_aero import AeroForCausalLM
    model = AeroForCausalLM.from_pretrained("DIR")
    out = model(input_ids, return_entropy=True)   # out.logits [B, T, V], out.entropy [L, B, H, T]
    tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=50)  # greedy, with a key/value cache

With transformers installed the same directory also loads through
`AutoModelForCausalLM.from_pretrained("DIR", trust_remote_code=True)`, whose `generate` is Hugging Face's
(GenerationMixin); `aero_generate` is this file's own (greedy, temperature, top-k, top-p, end of text), which
is `generate` when transformers is not installed. Both stop at the config's eos_token_id (the tokenizer's
end of text, also the pad id), refuse an empty or right-padded prompt (transformers only warns about right
padding) and warn, as transformers does for GPT-2, about a batch without attention_mask. Left-padded batches
take an attention_mask; every real token keeps its absolute position (position embedding and learned
temperature). Training-time reparameterisations (weight and spectral norm, FFN scalars, the LayerNorm
substitute) are already folded into the weights; learned temperatures are a [H, T] buffer per layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

try:  # optional: lets AutoModelForCausalLM(trust_remote_code=True) load the same directory and generate
    from transformers import GenerationMixin
    from transformers import PretrainedConfig as _ConfigBase
    from transformers import PreTrainedModel
    from transformers.utils import ModelOutput as _OutputBase
    _ModelBases, _WITH_TRANSFORMERS = (PreTrainedModel, GenerationMixin), True
except ImportError:
    _ConfigBase, _ModelBases, _WITH_TRANSFORMERS = object, (nn.Module,), False

    class _OutputBase:
        """Indexable like transformers' ModelOutput: out[0] is the first field that is set, out["logits"] a field."""

        def to_tuple(self):
            return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

        def __getitem__(self, key):
            return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

        @property
        def past_key_values(self):
            return self.cache

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ENTROPY_EPS = 1e-9
ACTIVATIONS = ("gelu", "relu", "leaky_relu", "identity")
LN_MODES = ("layernorm", "centered_affine")
ARCHITECTURE_FIELDS = dict(
    vocab_size=257, max_len=128, num_layers=2, num_heads=2, d_model=32, d_ff=128, ffn_layers=None, ffn_fused=False,
    activation="gelu", gelu_form="exact", ln_attn=True, ln_ffn=True, ln_final=True, ln_mode="layernorm",
    ln_epsilon=1e-5, learnable_temperature=False, residual_scale=False)
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # the tokenizer's end of text (aero-export), or None


class AeroConfig(_ConfigBase):
    """The architecture of an exported AERO model (config.json); `aero` holds the run's provenance."""

    model_type = "aero"
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "hidden_size": "d_model",
                     "max_position_embeddings": "max_len"}  # the names transformers' caches and generate read

    def __init__(self, **fields):
        for name, default in ARCHITECTURE_FIELDS.items():
            setattr(self, name, fields.pop(name, default))
        tokens = {name: fields.pop(name, None) for name in TOKEN_FIELDS}
        self.aero = fields.pop("aero", {})
        if self.ffn_layers is None:
            self.ffn_layers = list(range(self.num_layers))
        if self.activation not in ACTIVATIONS or self.ln_mode not in LN_MODES:
            raise ValueError(f"activation={self.activation!r}, ln_mode={self.ln_mode!r}; accepted: "
                             f"{', '.join(ACTIVATIONS)} and {', '.join(LN_MODES)}")
        if _WITH_TRANSFORMERS:
            fields.setdefault("tie_word_embeddings", True)
            super().__init__(**fields)
        for name, value in tokens.items():  # after transformers' __init__, which may reset them
            setattr(self, name, value)

    @classmethod
    def from_fields(cls, fields: dict) -> "AeroConfig":
        """The config of a config.json's fields (the class-level keys model_type, architectures, auto_map dropped)."""
        return cls(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures", "auto_map")})

    @classmethod
    def from_json_file(cls, path: str) -> "AeroConfig":
        with open(path) as f:
            return cls.from_fields(json.load(f))


FLOAT32_BUFFERS = ("temperature", "residual_scale", "slope")  # kept float32 in a bfloat16 model


# transformers 5 names the cache `cache` (with `past_key_values` a read-only alias), transformers 4 `past_key_values`
_CACHE_FIELD = "cache" if isinstance(getattr(_OutputBase, "past_key_values", None), property) else "past_key_values"
AeroOutput = dataclasses.make_dataclass("AeroOutput", [
    ("logits", Optional[torch.Tensor], None),  # [B, T, V], float32
    (_CACHE_FIELD, Optional[object], None),  # the key/value cache, when use_cache
    ("entropy", Optional[torch.Tensor], None),  # [L, B, H, T] attention entropy of every row, when requested
], bases=(_OutputBase,), namespace={"__module__": __name__})


class KeyValueCache:
    """Keys and values of every layer, [B, H, S, K], grown by each forward pass; the methods transformers'
    DynamicCache has, so either serves."""

    def __init__(self):
        self.layers = []

    def update(self, keys, values, layer_idx: int, cache_kwargs=None):
        if layer_idx == len(self.layers):
            self.layers.append((keys, values))
        else:
            old_keys, old_values = self.layers[layer_idx]
            self.layers[layer_idx] = (torch.cat([old_keys, keys], dim=2), torch.cat([old_values, values], dim=2))
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx][0].shape[2] if layer_idx < len(self.layers) else 0


class Norm(nn.Module):
    """LayerNorm, or the frozen substitute: (x - mean x) * weight + bias, a linear map."""

    def __init__(self, config: AeroConfig):
        super().__init__()
        self.mode, self.eps = config.ln_mode, config.ln_epsilon
        self.weight = nn.Parameter(torch.ones(config.d_model))
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.mode == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight.float(), self.bias.float(), self.eps)
        return (x - x.mean(-1, keepdim=True)) * self.weight.float() + self.bias.float()


class Attention(nn.Module):
    """Causal multi-head attention; with learned temperatures t [H, T], scores / (t * sqrt(K))."""

    def __init__(self, config: AeroConfig):
        super().__init__()
        D, self.heads = config.d_model, config.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(D, D) for _ in range(4))
        if config.learnable_temperature:
            self.register_buffer("temperature", torch.ones(config.num_heads, config.max_len))
        else:
            self.temperature = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache, layer: int,
                want_entropy: bool):
        """x [B, T, D]; positions [B, T] (absolute); allowed [B, 1, T, S] which cached keys each query sees."""
        B, T, D = x.shape
        H, K = self.heads, D // self.heads
        q, k, v = (proj(x).float().view(B, T, H, K).transpose(1, 2) for proj in (self.q_proj, self.k_proj,
                                                                                  self.v_proj))
        if cache is not None:
            k, v = cache.update(k, v, layer)
        scores = q @ k.transpose(-1, -2) / math.sqrt(K)
        if self.temperature is not None:
            scores = scores / self.temperature.float()[:, positions].permute(1, 0, 2)[..., None]
        probs = torch.softmax(scores.masked_fill(~allowed, torch.finfo(torch.float32).min), dim=-1)
        entropy = -(probs * torch.log(probs + ENTROPY_EPS)).sum(-1) if want_entropy else None  # [B, H, T]
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, D)
        return self.o_proj(out.to(self.o_proj.weight.dtype)), entropy


class FeedForward(nn.Module):
    """act(x W_in) W_out, or one fused d x d matrix (identity activation)."""

    def __init__(self, config: AeroConfig):
        super().__init__()
        self.activation, self.gelu_form = config.activation, config.gelu_form
        D = config.d_model
        if config.ffn_fused:
            self.fused = nn.Linear(D, D)
        else:
            self.fc_in, self.fc_out = nn.Linear(D, config.d_ff), nn.Linear(config.d_ff, D)
        if config.activation == "leaky_relu":
            self.register_buffer("slope", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "fused"):
            return self.fused(x)
        h = self.fc_in(x)
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh" if self.gelu_form == "tanh" else "none")
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "leaky_relu":
            h = torch.where(h >= 0, h, self.slope * h)
        return self.fc_out(h)


class Block(nn.Module):
    """x + Attn(LN1 x), then x + FFN(LN2 x), or beta x + FFN(x) with the folded 1/alpha (ScFFN)."""

    def __init__(self, config: AeroConfig, layer: int):
        super().__init__()
        self.ln_attn = Norm(config) if config.ln_attn else None
        self.attn = Attention(config)
        has_ffn = layer in config.ffn_layers
        self.ln_ffn = Norm(config) if config.ln_ffn and has_ffn else None
        self.ffn = FeedForward(config) if has_ffn else None
        if config.residual_scale and has_ffn:
            self.register_buffer("residual_scale", torch.ones(()))
        else:
            self.residual_scale = None

    def forward(self, x: torch.Tensor, *attention_args):
        attended, entropy = self.attn(self.ln_attn(x).to(x.dtype) if self.ln_attn else x, *attention_args)
        x = x + attended
        if self.ffn is None:
            return x, entropy
        ffn = self.ffn(self.ln_ffn(x).to(x.dtype) if self.ln_ffn else x)
        return (self.residual_scale * x if self.residual_scale is not None else x) + ffn, entropy


class AeroForCausalLM(*_ModelBases):
    """Token ids [B, T] -> AeroOutput(logits [B, T, V], entropy); the LM head is the token embedding."""

    config_class = AeroConfig
    base_model_prefix = "aero"
    _input_embed_layer = "wte"

    def __init__(self, config: AeroConfig):
        if _WITH_TRANSFORMERS:
            super().__init__(config)
        else:
            super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_len, config.d_model)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.num_layers))
        self.ln_f = Norm(config) if config.ln_final else None
        if _WITH_TRANSFORMERS:
            self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    @classmethod
    def from_pretrained(cls, path: str, *args, dtype=None, torch_dtype=None, **unused) -> "AeroForCausalLM":
        """Load an exported directory (config.json, model.safetensors); strict: every tensor, nothing else.

        `dtype` (or transformers' `torch_dtype`): a torch dtype or its name; None or "auto" keeps the file's.
        """
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
            raise ValueError(f"{path} is not an aero-jax export (no {WEIGHTS_FILE}); accepted: a directory written "
                             f"by aero-export")
        config = AeroConfig.from_json_file(os.path.join(path, CONFIG_FILE))
        weights = load_file(os.path.join(path, WEIGHTS_FILE))
        dtype = dtype or torch_dtype
        if dtype in (None, "auto"):
            dtype = weights["wte.weight"].dtype  # temperatures and scalars are float32 in any export
        model = cls(config).cast(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model.load_state_dict(weights, strict=True)
        return model.eval()

    def cast(self, dtype: torch.dtype) -> "AeroForCausalLM":
        """`to(dtype)` for the weights; learned temperatures and scalars (FLOAT32_BUFFERS) keep their float32 values."""
        kept = [(module, name, buffer.float().clone()) for module in self.modules()
                for name, buffer in module.named_buffers(recurse=False) if name in FLOAT32_BUFFERS]
        self.to(dtype)
        for module, name, buffer in kept:
            setattr(module, name, buffer)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, past_key_values=None, use_cache: Optional[bool] = None,
                return_entropy: bool = False, labels=None, cache=None, **unused) -> AeroOutput:
        """Logits of every position; with `past_key_values` (or use_cache) the keys and values of earlier tokens
        are reused and returned. `attention_mask` [B, S] covers the cached and the new tokens (0: padding);
        `position_ids` default to the count of real tokens before each one."""
        if labels is not None:
            raise ValueError("labels are not supported; accepted: input_ids (compute the loss from out.logits)")
        check_tokens(input_ids)
        B, T = input_ids.shape
        past_key_values = cache if cache is not None else past_key_values  # transformers 5 passes `cache`
        cache = past_key_values if past_key_values is not None else (KeyValueCache() if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} is invalid; accepted: [B, cached + "
                             f"new tokens] = [{B}, {past + T}]")
        real = attention_mask.bool()
        if position_ids is None:
            position_ids = real.long().cumsum(-1)[:, past:] - 1
        if int(position_ids.max()) >= self.config.max_len:
            raise ValueError(f"position {int(position_ids.max())} is invalid; accepted: positions below max_len="
                             f"{self.config.max_len}")
        positions = position_ids.clamp(min=0)  # padding: any position, it is masked
        slots = torch.arange(past + T, device=input_ids.device)
        causal = slots[None, :] <= slots[past:, None]  # [T, S]: each new token sees the slots up to its own
        allowed = (causal[None] & real[:, None, :]) | (slots[None, None, :] == slots[past:, None][None])  # [B, T, S]
        x = self.wte(input_ids) + self.wpe(positions)
        entropies = []
        for layer, block in enumerate(self.h):
            x, entropy = block(x, positions, allowed[:, None], cache, layer, return_entropy)
            entropies.append(entropy)
        if self.ln_f is not None:
            x = self.ln_f(x).to(x.dtype)
        logits = (x @ self.wte.weight.T).float()
        kept = cache if (use_cache or past_key_values is not None) else None
        return AeroOutput(logits=logits, entropy=torch.stack(entropies) if return_entropy else None,
                          **{_CACHE_FIELD: kept})

    @torch.no_grad()
    def aero_generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                      max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, **unused) -> torch.Tensor:
        """Prompts [B, P] (left-padded, with their attention_mask) followed by up to max_new_tokens tokens, as
        transformers' generate returns them: greedy, or sampled with temperature, top-k and top-p; a row that
        reached eos_token_id continues with pad_token_id (eos when none is given). eos_token_id and pad_token_id
        default to the config's, the tokenizer's end of text in an export; check_prompts says what is refused."""
        check_prompts(input_ids, attention_mask)
        B, P = input_ids.shape
        if P + max_new_tokens > self.config.max_len:
            raise ValueError(f"a prompt of {P} tokens plus max_new_tokens={max_new_tokens} is invalid; accepted: at "
                             f"most max_len={self.config.max_len} positions")
        if attention_mask is None and B > 1:
            warnings.warn(f"a batch of {B} prompts without attention_mask is read as unpadded: a left-padded row "
                          f"continues as if its padding were text (the ids cannot tell padding from text: an export's "
                          f"pad id is also its end of text); pass attention_mask (0 at padding)", stacklevel=2)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        eos_token_id = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad_token_id = self.config.pad_token_id if pad_token_id is None else pad_token_id
        fill = pad_token_id if pad_token_id is not None else eos_token_id
        out = self(input_ids, attention_mask=mask, use_cache=True)
        tokens, done = input_ids, torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            next_B = choose_next(out.logits[:, -1], do_sample=do_sample, temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=generator)
            if fill is not None:
                next_B = torch.where(done, torch.full_like(next_B, fill), next_B)
            tokens = torch.cat([tokens, next_B[:, None]], dim=1)
            if eos_token_id is not None:
                done |= next_B == eos_token_id
                if bool(done.all()):
                    break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self(next_B[:, None], attention_mask=mask, cache=getattr(out, _CACHE_FIELD), use_cache=True)
        return tokens

    if _WITH_TRANSFORMERS:
        def generate(self, inputs=None, *args, **kwargs):
            """transformers' generate (GenerationMixin), after check_prompts: an empty or right-padded prompt is
            refused rather than continued wrongly."""
            check_prompts(inputs if inputs is not None else kwargs.get("input_ids"), kwargs.get("attention_mask"))
            return super().generate(inputs, *args, **kwargs)
    else:
        generate = aero_generate


def check_tokens(input_ids: torch.Tensor) -> None:
    """Refuse token ids that are not [B, T] with at least one token: a forward pass has nothing to compute."""
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids of shape {list(input_ids.shape)} is invalid; accepted: [batch, tokens] with at "
                         f"least one token (a prompt needs one to continue from)")


def check_prompts(input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor]) -> None:
    """Refuse prompts that generation would continue from a pad token, wrongly and silently: none at all, or rows
    whose attention_mask ends in padding (right-padded, or padding only). A decoder-only model continues from the
    last token of each row, so only left padding is right (transformers merely warns about right padding)."""
    if input_ids is None:  # inputs_embeds: transformers' generate checks them
        return
    check_tokens(input_ids)
    if attention_mask is None or attention_mask.shape != input_ids.shape:  # a mask of another shape: forward refuses
        return
    padded_last = torch.nonzero(attention_mask[:, -1] == 0).flatten().tolist()
    if padded_last:
        raise ValueError(f"attention_mask marks the last prompt token of rows {padded_last} as padding (right padding, "
                         f"or a row of padding only); accepted: left-padded prompts, each with at least one real "
                         f"token (a tokenizer's padding_side='left')")


def choose_next(logits_BxV: torch.Tensor, *, do_sample: bool, temperature: float, top_k: int, top_p: float,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The next token of each row: the argmax, or a sample of the logits / temperature within the top-k tokens and
    the nucleus of probability top_p (ties with the last token kept are kept, as aero_jax.sample does)."""
    if not do_sample or temperature == 0:
        return logits_BxV.argmax(-1)
    logits = logits_BxV.float() / temperature
    keep = torch.ones_like(logits, dtype=torch.bool)
    if 0 < top_k < logits.shape[-1]:
        keep &= logits >= torch.topk(logits, top_k, dim=-1).values[:, -1:]
    if top_p < 1:
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, _ = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens more likely than each
        threshold = torch.where(before < top_p, sorted_probs, torch.ones_like(sorted_probs)).min(-1, keepdim=True)
        keep &= probs >= threshold.values
    logits = logits.masked_fill(~keep, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
