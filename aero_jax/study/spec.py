"""A study's declaration: its runs, the size they share, the claims they test, and how each run is configured."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Mapping, Tuple

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.run_config import SIZE_FIELDS, validate, with_preset

PAPER_SIZE = dict(num_layers=12, num_heads=12, d_model=768, d_ff=3072, vocab_size=50257, max_len=128)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One architecture, trained once per seed; `overrides` are dotted config paths ("model.ereg_gamma")."""

    name: str
    preset: str
    seeds: Tuple[int, ...] = (0,)
    steps: int = 0  # 0: the config file's train.num_steps
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Condition:
    """What the papers' runs had that a result depends on. A run without it can show the effect, but its
    absence there says nothing: the claim is then "not testable here", naming what is missing."""

    num_layers: int = 0  # at least
    num_steps: int = 0  # at least
    dtype: str = ""  # exactly, e.g. "float16"
    heads: int = 0  # at least, L x H: a share finer than one head in L x H cannot be told apart

    def unmet(self, config) -> List[str]:
        """What a run config lacks of the condition, each as "ours (the papers' value)"."""
        missing = []
        if config.model.num_layers < self.num_layers:
            missing.append(f"L={config.model.num_layers} (the papers: L={self.num_layers})")
        heads = config.model.num_layers * config.model.num_heads
        if heads < self.heads:
            missing.append(f"{heads} heads, one head {1 / heads:.2%} of them (the papers: {self.heads})")
        if config.train.num_steps < self.num_steps:
            missing.append(f"{config.train.num_steps:,} steps (the papers: ~{self.num_steps:,})")
        if self.dtype and config.model.dtype != self.dtype:
            missing.append(f"{config.model.dtype} (the papers: {self.dtype})")
        return missing


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    config: str  # a config file as --config names it, e.g. "configs/default.py"
    size: Mapping[str, int]  # every SIZE_FIELDS value, shared by all runs
    runs: Tuple[RunSpec, ...]
    claims: Tuple[Any, ...] = ()  # aero_jax.study.claims.Claim
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # train.* for every run
    differences: str = ""  # what differs from the papers and why, for the page
    headline: Tuple[str, ...] = ()  # (baseline run, run): the page opens with the run's saving at its perplexity
    # {claim number ("1a"): (its verdict in an earlier pass, what changed in the test since)}: a page section
    earlier: Mapping[str, Tuple[str, str]] = dataclasses.field(default_factory=dict)
    earlier_title: str = "Changes since the earlier pass"

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


def load_study(spec: str) -> Study:
    """The Study of a spec file ('path.py[:variant]'), checked: known presets, distinct names, full size, and its
    config file loads."""
    study = _call_file(spec, "get_study", f"--spec={spec}",
                       "a study file defining get_study(variant), such as studies/paper_claims.py[:variant]")
    _call_file(study.config, "get_config", f"--spec={spec}: its config {study.config}",
               "a config file defining get_config(variant), such as configs/default.py[:variant], relative to the "
               "current folder")
    check_study(study)
    return study


def _call_file(path: str, function: str, what: str, accepted: str):
    """`function` of a file named as --config names it; a file that cannot be read or parsed, that lacks
    `function`, or whose `function` refuses its variant, is bad input, refused in one line naming `what`."""
    from aero_jax.cli import load_config_file  # the same loader as --config

    try:
        return load_config_file(path, function=function)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # e.g. an unknown variant, or no variant parameter
        raise ConfigError(f"{what}: {type(error).__name__}: {error}; accepted: {accepted}") from error
    except (OSError, SyntaxError, AttributeError) as error:
        if isinstance(error, AttributeError) and error.name != function:
            raise  # raised inside `function`: the file's own failure
        reason = (f"syntax error at line {error.lineno}: {error.msg}" if isinstance(error, SyntaxError) else
                  f"no {function}" if isinstance(error, AttributeError) else error.strerror or type(error).__name__)
        raise ConfigError(f"{what} cannot be loaded ({reason}); accepted: {accepted}") from error


def check_study(study: Study) -> None:
    names = [run.name for run in study.runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"study {study.name} names runs {', '.join(repeated)} more than once; accepted: distinct "
                          f"run names")
    for run in study.runs:
        presets.resolve(run.preset)
        if not run.seeds or run.steps < 0:
            raise ConfigError(f"run {run.name}: seeds={run.seeds}, steps={run.steps} are invalid; accepted: at "
                              f"least one seed, steps >= 0")
    missing = [f for f in SIZE_FIELDS if f not in study.size]
    if missing:
        raise ConfigError(f"study {study.name} size lacks {', '.join(missing)}; accepted: every one of "
                          f"{', '.join(SIZE_FIELDS)}")
    if study.headline and (len(study.headline) != 2 or not set(study.headline) <= set(names)):
        raise ConfigError(f"study {study.name}: headline={study.headline} is invalid; accepted: (baseline run, run) "
                          f"among {', '.join(names)}")
    for claim in study.claims:
        unknown = [n for n in claim.runs() if n not in names]
        if unknown:
            raise ConfigError(f"claim {claim.title!r} names runs {', '.join(unknown)}; accepted: {', '.join(names)}")
        claim.check(study)


def run_config(study: Study, run: RunSpec, seed: int):
    """The run config of one run and seed: the study's config file, size and train section, then the overrides."""
    from aero_jax.cli import load_config_file

    config = load_config_file(study.config)
    # The preset at the study's size, keeping what the config file chose beyond its own preset (e.g. dtype).
    config.model = with_preset({**dict(config.model), **study.size}, run.preset, file_section=config.model)
    config.seed = seed
    config.train.update(dict(study.train))
    if run.steps:
        config.train.num_steps = run.steps
    for path, value in run.overrides.items():
        section, _, field = path.partition(".")
        if section not in config or field not in config[section]:
            raise ConfigError(f"run {run.name}: override {path} names no config field; accepted: SECTION.FIELD of "
                              f"{study.config}")
        config[section][field] = value
    validate(config)
    return config


def workdir_of(root: str, run: RunSpec, seed: int) -> str:
    """The run's workdir, named by the run's slug: 'EReg gamma=0.1' -> ROOT/ereg_gamma_0_1-seed0."""
    return os.path.join(root, f"{presets.slug(run.name)}-seed{seed}")
