"""AERO language models in PyTorch: the whole family exported by aero-jax, from plain folded weights.

Depends on torch and safetensors only; this file is copied next to the weights (`aero-export`):

    from modeling_aero import AeroForCausalLM
    model = AeroForCausalLM.from_pretrained("DIR")
    out = model(input_ids, return_entropy=True)   # out.logits [B, T, V], out.entropy [L, B, H, T]

With transformers installed the same directory also loads through
`AutoModelForCausalLM.from_pretrained("DIR", trust_remote_code=True)`. Training-time
reparameterisations (weight and spectral norm, FFN scalars, the LayerNorm substitute) are
already folded into the weights; learned temperatures are a [H, T] buffer per layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

try:  # optional: lets AutoModelForCausalLM(trust_remote_code=True) load the same directory
    from transformers import PretrainedConfig as _ConfigBase
    from transformers import PreTrainedModel as _ModelBase
    _WITH_TRANSFORMERS = True
except ImportError:
    _ConfigBase, _ModelBase, _WITH_TRANSFORMERS = object, nn.Module, False

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ENTROPY_EPS = 1e-9
ACTIVATIONS = ("gelu", "relu", "leaky_relu", "identity")
LN_MODES = ("layernorm", "centered_affine")
ARCHITECTURE_FIELDS = dict(
    vocab_size=257, max_len=128, num_layers=2, num_heads=2, d_model=32, d_ff=128, ffn_layers=None, ffn_fused=False,
    activation="gelu", gelu_form="exact", ln_attn=True, ln_ffn=True, ln_final=True, ln_mode="layernorm",
    ln_epsilon=1e-5, learnable_temperature=False, residual_scale=False)


class AeroConfig(_ConfigBase):
    """The architecture of an exported AERO model (config.json); `aero` holds the run's provenance."""

    model_type = "aero"

    def __init__(self, **fields):
        for name, default in ARCHITECTURE_FIELDS.items():
            setattr(self, name, fields.pop(name, default))
        self.aero = fields.pop("aero", {})
        if self.ffn_layers is None:
            self.ffn_layers = list(range(self.num_layers))
        if self.activation not in ACTIVATIONS or self.ln_mode not in LN_MODES:
            raise ValueError(f"activation={self.activation!r}, ln_mode={self.ln_mode!r}; accepted: "
                             f"{', '.join(ACTIVATIONS)} and {', '.join(LN_MODES)}")
        if _WITH_TRANSFORMERS:
            fields.setdefault("tie_word_embeddings", True)
            super().__init__(**fields)

    @classmethod
    def from_fields(cls, fields: dict) -> "AeroConfig":
        """The config of a config.json's fields (the class-level keys model_type, architectures, auto_map dropped)."""
        return cls(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures", "auto_map")})

    @classmethod
    def from_json_file(cls, path: str) -> "AeroConfig":
        with open(path) as f:
            return cls.from_fields(json.load(f))


@dataclasses.dataclass
class AeroOutput:
    logits: torch.Tensor  # [B, T, V], float32
    entropy: Optional[torch.Tensor] = None  # [L, B, H, T] attention entropy of every row, when requested


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

    def forward(self, x: torch.Tensor):
        B, T, D = x.shape
        H, K = self.heads, D // self.heads
        q, k, v = (proj(x).float().view(B, T, H, K).transpose(1, 2) for proj in (self.q_proj, self.k_proj,
                                                                                  self.v_proj))
        scores = q @ k.transpose(-1, -2) / math.sqrt(K)
        if self.temperature is not None:
            scores = scores / self.temperature[:, :T].float()[None, :, :, None]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        probs = torch.softmax(scores.masked_fill(~causal, torch.finfo(torch.float32).min), dim=-1)
        entropy = -(probs * torch.log(probs + ENTROPY_EPS)).sum(-1)  # [B, H, T]
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

    def forward(self, x: torch.Tensor):
        attended, entropy = self.attn(self.ln_attn(x).to(x.dtype) if self.ln_attn else x)
        x = x + attended
        if self.ffn is None:
            return x, entropy
        ffn = self.ffn(self.ln_ffn(x).to(x.dtype) if self.ln_ffn else x)
        return (self.residual_scale * x if self.residual_scale is not None else x) + ffn, entropy


class AeroForCausalLM(_ModelBase):
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
            dtype = next(iter(weights.values())).dtype
        model = cls(config).to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model.load_state_dict(weights, strict=True)
        return model.eval()

    def forward(self, input_ids: torch.Tensor, return_entropy: bool = False, attention_mask=None, labels=None,
                past_key_values=None, **unused) -> AeroOutput:
        """Logits of every position of unpadded rows; padding, labels and a cache are refused, not ignored."""
        if labels is not None or past_key_values is not None:
            raise ValueError("labels and past_key_values are not supported; accepted: input_ids (and an all-ones "
                             "attention_mask)")
        if attention_mask is not None and not bool(torch.all(attention_mask == 1)):
            raise ValueError("padded rows are not supported; accepted: rows of equal length without padding")
        T = input_ids.shape[-1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} is invalid; accepted: at most max_len={self.config.max_len}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)[None]
        entropies = []
        for block in self.h:
            x, entropy = block(x)
            entropies.append(entropy)
        if self.ln_f is not None:
            x = self.ln_f(x).to(x.dtype)
        logits = (x @ self.wte.weight.T).float()
        return AeroOutput(logits, torch.stack(entropies) if return_entropy else None)
