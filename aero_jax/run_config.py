"""The run configuration (an ml_collections ConfigDict) and the one place it is validated.

Sections: model (a preset's resolved ModelConfig fields plus its name), data, optim, train,
recovery. Config files in configs/ start from `base_config()` and change what they need.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import ml_collections

from aero_jax import presets, sharding
from aero_jax.config import ConfigError, ModelConfig, field_names

RECOVERY_POLICIES = ("stop", "rollback")
PACKINGS = ("chunk", "concat")


def model_section(preset: str, size: str = "gpt2-small", **overrides) -> ml_collections.ConfigDict:
    """The model section: every ModelConfig field of the preset at that size, and its name."""
    fields = dataclasses.asdict(presets.model_config(preset, size=size, **overrides))
    fields["ffn_layers"] = list(fields["ffn_layers"]) if fields["ffn_layers"] is not None else None
    return ml_collections.ConfigDict({"preset": preset, **fields})


def model_config_from(section: Mapping) -> ModelConfig:
    """The validated ModelConfig of a model section (ConfigDict or the dict saved in config.json)."""
    fields = {k: v for k, v in dict(section).items() if k != "preset"}
    unknown = sorted(set(fields) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s) model.{', model.'.join(unknown)}; accepted: "
                          f"model.preset, model.{', model.'.join(field_names())}")
    for name in ("weight_norm", "spectral_norm"):
        fields[name] = tuple(fields.get(name, ()))
    return ModelConfig(**fields)


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config: the papers' optimizer, a small run schedule."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameters and the data order are functions of it
    c.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny")
    c.data = ml_collections.ConfigDict(dict(
        dataset="python_stdlib",  # the embedded default; any other name is read with tfds.data_source
        source_dir="",  # python_stdlib only: another folder of .py files instead of the standard library
        data_dir="~/.cache/aero_jax/tensorflow_datasets",  # TFDS data_dir (local path or gs://)
        cache_dir="~/.cache/aero_jax/packed",  # tokenized, packed sequences, keyed by their inputs
        tokenizer="byte",  # byte | bpe
        tokenizer_path="",  # tokenizer.json, for bpe
        packing="chunk",  # chunk (the papers: T-token pieces, remainders dropped) | concat
    ))
    c.optim = ml_collections.ConfigDict(dict(
        peak_lr=1e-3, weight_decay=0.1, warmup_fraction=0.05, decay="linear", end_lr_fraction=0.0,
        power=2.0,  # for decay=polynomial
        clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8, decay_embeddings=True,
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=32, grad_accum_steps=1,
        log_every=50, eval_every=500, eval_batch_size=32, eval_batches=20,  # eval_batches <= 0: all
        checkpoint_every=500, keep_checkpoints=3,
    ))
    # Device mesh (data, fsdp, tensor; one size may be -1 for the devices left) and the table
    # mapping logical axis names onto mesh axes ("" replicates); see aero_jax/sharding.py.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = ml_collections.ConfigDict(dict(sharding.RULES))
    c.recovery = ml_collections.ConfigDict(dict(
        policy="stop",  # stop | rollback (to the last good checkpoint, skipping the diverging data)
        max_recoveries=3, lr_factor=0.5,  # rollback: at most this many, each scaling the learning rate
    ))
    return c


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid; accepted: a positive integer")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first invalid value, naming the field and the accepted values."""
    model_config_from(config.model)
    t = config.train
    for name in ("num_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every", "eval_batch_size",
                 "checkpoint_every", "keep_checkpoints"):
        _positive(f"train.{name}", t[name])
    if t.batch_size % t.grad_accum_steps:
        raise ConfigError(f"train.grad_accum_steps={t.grad_accum_steps} is invalid; accepted: a divisor of "
                          f"train.batch_size={t.batch_size}")
    if config.recovery.policy not in RECOVERY_POLICIES:
        raise ConfigError(f"recovery.policy={config.recovery.policy!r} is invalid; accepted: "
                          f"{', '.join(RECOVERY_POLICIES)}")
    if not 0 < config.recovery.lr_factor <= 1:
        raise ConfigError(f"recovery.lr_factor={config.recovery.lr_factor!r} is invalid; accepted: (0, 1]")
    if config.data.packing not in PACKINGS:
        raise ConfigError(f"data.packing={config.data.packing!r} is invalid; accepted: {', '.join(PACKINGS)}")
    if config.optim.peak_lr <= 0:
        raise ConfigError(f"optim.peak_lr={config.optim.peak_lr!r} is invalid; accepted: a positive number")
