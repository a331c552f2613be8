"""A study's declaration: its runs, the size they share, the claims they test, and how each run is configured."""

from __future__ import annotations

import dataclasses
import difflib
import os
import traceback
from typing import Any, Iterable, List, Mapping, Optional, Tuple

from aero_jax import presets
from aero_jax.cli import load_config_file  # the same loader as --config
from aero_jax.config import ConfigError
from aero_jax.run_config import SIZE_FIELDS, validate, with_preset

RUN_OWN_FIELDS = {"model.preset": "preset", "seed": "seeds"}  # config fields a RunSpec sets itself
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


def _call_file(spec: str, function: str, what: str, accepted: str):
    """`function` of a file named as --config names it; a file that cannot be read or parsed, that lacks
    `function`, or that raises anything while it runs (its top level or `function`, e.g. a NameError or an
    unknown variant), is bad input, refused in one line naming `what` and, where the file raised, its line."""
    path = spec.split(":", 1)[0]
    try:
        return load_config_file(spec, function=function)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a study or config file may raise anything
        raise ConfigError(f"{what} cannot be loaded ({_load_failure(error, path, function)}); accepted: "
                          f"{accepted}") from error


def _load_failure(error: Exception, path: str, function: str) -> str:
    """What went wrong loading the file `path`, in words, with the line of `path` it happened at where it did."""
    line = _line_in(error, path)
    if isinstance(error, SyntaxError):
        where = "" if _same_file(error.filename, path) else f" in {error.filename}"
        return f"syntax error{where} at line {error.lineno}: {error.msg}"
    if line is None and isinstance(error, AttributeError) and error.name == function:
        return f"no {function}"
    if line is None and isinstance(error, OSError):  # the file itself cannot be read
        return error.strerror or type(error).__name__
    at = f" at line {line}" if line is not None else ""
    message = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}{at}: {message}"


def _line_in(error: BaseException, path: str) -> Optional[int]:
    """The line of `path` the error was raised through, innermost first; None when the file did not run it."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if _same_file(frame.filename, path)]
    return lines[-1] if lines else None


def _same_file(a: Optional[str], b: str) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _refuse_unknown(where: str, prefix: str, given: Iterable[str], accepted: Iterable[str], what: str) -> None:
    """Refuse the first of `given` outside `accepted`, naming it, the nearest accepted name and every one."""
    accepted = list(accepted)
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return
    guess = difflib.get_close_matches(str(unknown[0]), accepted, n=1)
    hint = f" (did you mean {prefix}{guess[0]}?)" if guess else ""
    raise ConfigError(f"{where} {prefix}{unknown[0]} names no {what}{hint}; accepted: "
                      f"{', '.join(prefix + name for name in accepted)}")


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
    _refuse_unknown(f"study {study.name}:", "size.", study.size, SIZE_FIELDS, "size field")
    missing = [f for f in SIZE_FIELDS if f not in study.size]
    if missing:
        raise ConfigError(f"study {study.name} size lacks {', '.join(missing)}; accepted: every one of "
                          f"{', '.join(SIZE_FIELDS)}")
    if study.headline and (len(study.headline) != 2 or not set(study.headline) <= set(names)):
        raise ConfigError(f"study {study.name}: headline={study.headline} is invalid; accepted: (baseline run, run) "
                          f"among {', '.join(names)}")
    for run in study.runs:  # every run's config, before anything trains: a bad field of the fifth run stops none
        for seed in run.seeds:
            run_config(study, run, seed)
    for claim in study.claims:
        unknown = [n for n in claim.runs() if n not in names]
        if unknown:
            raise ConfigError(f"claim {claim.title!r} names runs {', '.join(unknown)}; accepted: {', '.join(names)}")
        claim.check(study)


def run_config(study: Study, run: RunSpec, seed: int):
    """The run config of one run and seed: the study's config file, size and train section, then the overrides.

    Every field they name must be one of the config file's: a misspelt one is refused, never added beside the
    field it meant (which would keep its default) nor dropped."""
    config = load_config_file(study.config)
    _refuse_unknown(f"study {study.name}:", "size.", study.size, SIZE_FIELDS, "size field")
    _refuse_unknown(f"study {study.name}:", "train.", study.train, config.train, "config field")
    # The preset at the study's size, keeping what the config file chose beyond its own preset (e.g. dtype).
    config.model = with_preset({**dict(config.model), **study.size}, run.preset, file_section=config.model)
    config.seed = seed
    config.train.update(dict(study.train))
    if run.steps:
        config.train.num_steps = run.steps
    sections = [name for name, value in config.items() if hasattr(value, "keys")]
    for path, value in run.overrides.items():
        section, _, field = str(path).partition(".")
        if path in RUN_OWN_FIELDS:
            own = RUN_OWN_FIELDS[path]
            raise ConfigError(f"run {run.name}: override {path} is set by the run's {own}; accepted: "
                              f"RunSpec({own}=...) instead of the override")
        if section not in sections or not field:
            raise ConfigError(f"run {run.name}: override {path} names no config field; accepted: SECTION.FIELD, "
                              f"SECTION one of {', '.join(sections)}")
        _refuse_unknown(f"run {run.name}: override", f"{section}.", [field], config[section], "config field")
        config[section][field] = value
    validate(config)
    return config


def workdir_of(root: str, run: RunSpec, seed: int) -> str:
    """The run's workdir, named by the run's slug: 'EReg gamma=0.1' -> ROOT/ereg_gamma_0_1-seed0."""
    return os.path.join(root, f"{presets.slug(run.name)}-seed{seed}")
