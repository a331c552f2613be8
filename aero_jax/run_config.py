"""The run configuration (an ml_collections ConfigDict) and the one place it is validated.

Sections: model (a preset's resolved ModelConfig fields plus its name), data, optim, train,
recovery. Config files in configs/ start from `base_config()` and change what they need.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, List, Mapping, Tuple

import ml_collections

from aero_jax import presets, sharding
from aero_jax.config import MAX_SEED, NON_ARCHITECTURE_FIELDS, ConfigError, ModelConfig, field_names
from aero_jax.data.tokenizers import TOKENIZER_KINDS
from aero_jax.optim import DECAY_GROUPINGS, DECAY_SHAPES

RECOVERY_POLICIES = ("stop", "rollback")
PACKINGS = ("chunk", "concat")
SIZE_FIELDS = tuple(presets.SIZES["tiny"])


def model_section(preset: str, size: str = "gpt2-small", **overrides) -> ml_collections.ConfigDict:
    """The model section: every ModelConfig field of the preset at that size, and its name."""
    fields = dataclasses.asdict(presets.model_config(preset, size=size, **overrides))
    fields["ffn_layers"] = list(fields["ffn_layers"]) if fields["ffn_layers"] is not None else None
    return ml_collections.ConfigDict({"preset": preset, **fields})


def with_preset(section: Mapping, preset: str, *, file_section: Mapping,
                explicit: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The model section of another preset: its fields, at this section's size.

    What the config file chose beyond its own preset (`file_section`'s deviations, e.g. a dtype)
    and the fields named in `explicit` (command-line overrides) are kept on top.
    """
    name = presets.resolve(preset)
    kept = {**{f: section[f] for f in SIZE_FIELDS}, **preset_deviations(file_section),
            **{f: section[f] for f in explicit}}
    return model_section(name, size="tiny", **kept)


def preset_deviations(section: Mapping) -> dict:
    """{field: value} of every non-size field where a model section differs from its preset."""
    current = dataclasses.asdict(model_config_from(section))  # fields an older config.json lacks: defaults
    preset_fields = dataclasses.asdict(presets.model_config(presets.resolve(section["preset"]), size="tiny",
                                                            **{f: current[f] for f in SIZE_FIELDS}))
    return {f: current[f] for f in field_names()
            if f not in SIZE_FIELDS and _comparable(current[f]) != _comparable(preset_fields[f])}


def architecture_label(section: Mapping) -> str:
    """The preset's name, followed by every architecture field that differs from it.

    `SM+LN+G` names exactly that architecture; `SM+LN+G [activation='relu']` says where a run
    departs from it, so reports never show a preset's name for another model.
    """
    name = section["preset"]
    if name not in presets.names():
        return name
    changed = {f: v for f, v in preset_deviations(section).items() if f not in NON_ARCHITECTURE_FIELDS}
    return f"{name} [{', '.join(f'{f}={v!r}' for f, v in changed.items())}]" if changed else name


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def model_config_from(section: Mapping) -> ModelConfig:
    """The validated ModelConfig of a model section (ConfigDict or the dict saved in config.json)."""
    fields = {k: v for k, v in dict(section).items() if k != "preset"}
    unknown = sorted(set(fields) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s) model.{', model.'.join(unknown)}; accepted: "
                          f"model.preset, model.{', model.'.join(field_names())}")
    for name in ("weight_norm", "spectral_norm", "bias_groups"):
        if name in fields:  # a config.json of an older run lacks the newer fields: their defaults apply
            fields[name] = tuple(fields[name])
    return ModelConfig(**fields)


# What a resumed run may change: how far it goes, what it records and where, how it is laid out on devices and
# what it does on divergence; never how the steps already taken were computed. "section." admits a whole section.
RESUMABLE_FIELDS = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.checkpoint_fingerprints", "train.grad_accum_steps",
                    "model.remat", "data.data_dir", "data.cache_dir", "data.manual_dir", "mesh.", "sharding_rules.",
                    "recovery.")


def flat_fields(config: Mapping) -> dict:
    """{'section.field': value} of a run config or its saved config.json, the model section with every
    ModelConfig field (an older config.json's missing ones at their defaults), tuples as lists."""
    plain = json.loads(config.to_json_best_effort() if isinstance(config, ml_collections.ConfigDict)
                       else json.dumps(config))
    model = plain.pop("model")
    plain["model"] = json.loads(json.dumps({"preset": model["preset"],
                                            **dataclasses.asdict(model_config_from(model))}))
    flat = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_changes(saved: Mapping, config: ml_collections.ConfigDict) -> List[Tuple[str, Any, Any]]:
    """[(field, saved value, this config's value)] for every field that differs; a field the saved config lacks
    (one added since) counts as having had base_config()'s default."""
    old = {**flat_fields(base_config()), **flat_fields(saved)}
    return [(field, old.get(field), value) for field, value in flat_fields(config).items()
            if old.get(field) != value]


def resumable(field: str) -> bool:
    """Whether a resumed run may change `field` (see RESUMABLE_FIELDS)."""
    return any(field == allowed or (allowed.endswith(".") and field.startswith(allowed))
               for allowed in RESUMABLE_FIELDS)


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config: the papers' optimizer, a small run schedule."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameters and the data order are functions of it
    c.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny")
    c.data = ml_collections.ConfigDict(dict(
        dataset="python_stdlib",  # the embedded default; any other name is read with tfds.data_source
        source_dir="",  # python_stdlib only: another folder of .py files instead of the standard library
        manual_dir="",  # codeparrot_ds, languini_books: the downloaded files they are built from once
        data_dir="~/.cache/aero_jax/tensorflow_datasets",  # TFDS data_dir (local path or gs://)
        cache_dir="~/.cache/aero_jax/packed",  # tokenized, packed sequences, keyed by their inputs
        tokenizer="byte",  # byte | bpe | sentencepiece
        tokenizer_path="",  # tokenizer.json, for bpe
        packing="chunk",  # chunk (the papers: T-token pieces, remainders dropped) | concat
    ))
    c.optim = ml_collections.ConfigDict(dict(
        peak_lr=1e-3, weight_decay=0.1, warmup_fraction=0.05, decay="linear", end_lr_fraction=0.0,
        power=2.0,  # for decay=polynomial
        clip_norm=1.0,  # 0: no clipping
        b1=0.9, b2=0.999, eps=1e-8, decay_embeddings=True,
        decay_grouping="aero",  # aero (no decay on gains, thresholds, temperatures, slopes) | released
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=32, grad_accum_steps=1,
        log_every=50, eval_every=500, eval_batch_size=32, eval_batches=20,  # eval_batches <= 0: all
        checkpoint_every=500, keep_checkpoints=3,
        # Record each array's fingerprint at save and check it at restore: on an accelerator it
        # costs milliseconds; on a 2-core CPU about a third of a GPT-2-small save (docs/benchmarks.md).
        checkpoint_fingerprints=True,
        # model.dtype=float16 only: the dynamic loss scale (GradScaler's defaults, as the papers' fp16 runs).
        loss_scale_init=2.0 ** 16, loss_scale_growth_interval=2000,
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


def _integer(name: str, value, *, minimum: int, maximum: float = math.inf) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        accepted = (f"an integer in [{minimum}, {maximum}]" if maximum < math.inf else
                    "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise ConfigError(f"{name}={value!r} is invalid; accepted: {accepted}")


def _number(name: str, value, *, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = True) -> None:
    """Refuse anything but a finite number in the interval (low, high) with the given ends."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    inside = real and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        accepted = f"a finite number > {low:g}" if high == math.inf and low_open else \
            f"a finite number >= {low:g}" if high == math.inf else f"a number in {interval}"
        raise ConfigError(f"{name}={value!r} is invalid; accepted: {accepted}")


def _choice(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ConfigError(f"{name}={value!r} is invalid; accepted: {', '.join(accepted)}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first invalid value, naming the field and the accepted values."""
    _integer("seed", config.seed, minimum=0, maximum=MAX_SEED)
    presets.resolve(config.model.preset)
    model_config_from(config.model)
    t = config.train
    for name in ("num_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every", "eval_batch_size",
                 "checkpoint_every", "keep_checkpoints"):
        _integer(f"train.{name}", t[name], minimum=1)
    _integer("train.eval_batches", t.eval_batches, minimum=-(2 ** 62))  # <= 0: every batch
    _number("train.loss_scale_init", t.loss_scale_init, low=0, low_open=True)
    _integer("train.loss_scale_growth_interval", t.loss_scale_growth_interval, minimum=1)
    if not isinstance(t.checkpoint_fingerprints, bool):
        raise ConfigError(f"train.checkpoint_fingerprints={t.checkpoint_fingerprints!r} is invalid; accepted: "
                          f"True, False")
    if t.batch_size % t.grad_accum_steps:
        raise ConfigError(f"train.grad_accum_steps={t.grad_accum_steps} is invalid; accepted: a divisor of "
                          f"train.batch_size={t.batch_size}")
    o = config.optim
    _number("optim.peak_lr", o.peak_lr, low=0, low_open=True)
    _number("optim.weight_decay", o.weight_decay, low=0)
    _number("optim.warmup_fraction", o.warmup_fraction, low=0, high=1)
    _choice("optim.decay", o.decay, DECAY_SHAPES)
    _number("optim.end_lr_fraction", o.end_lr_fraction, low=0, high=1, high_open=False)
    _number("optim.power", o.power, low=0, low_open=True)
    _number("optim.clip_norm", o.clip_norm, low=0)
    _number("optim.b1", o.b1, low=0, high=1)
    _number("optim.b2", o.b2, low=0, high=1)
    _number("optim.eps", o.eps, low=0, low_open=True)
    _choice("optim.decay_grouping", o.decay_grouping, DECAY_GROUPINGS)
    r = config.recovery
    _choice("recovery.policy", r.policy, RECOVERY_POLICIES)
    _integer("recovery.max_recoveries", r.max_recoveries, minimum=0)
    _number("recovery.lr_factor", r.lr_factor, low=0, high=1, low_open=True, high_open=False)
    _choice("data.packing", config.data.packing, PACKINGS)
    _choice("data.tokenizer", config.data.tokenizer, TOKENIZER_KINDS)
