"""Reading a finished (or running) run directory back: its config, newest checkpoint and data."""

from __future__ import annotations

import json
from typing import List, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
from etils import epath

from aero_jax import data
from aero_jax.checkpoint import Checkpointer
from aero_jax.config import ConfigError
from aero_jax.entropy import entropy_range_shares
from aero_jax.model import AeroLM
from aero_jax.run_config import architecture_label
from aero_jax.train_step import TrainState, create_train_state
from aero_jax.trainer import CONFIG_FILE, build, evaluate_rows, evaluation_rows, load_data


class RestoredRun(NamedTuple):
    config: ml_collections.ConfigDict
    model: AeroLM
    step: int
    state: TrainState
    steps: Tuple[int, ...]  # every saved step, as listed when this one was read


def other_step_hint(steps: Sequence[int], step: int) -> str:
    """', e.g. --step N' with the newest other saved step, to end a message that refuses `step`."""
    others = [s for s in sorted(steps, reverse=True) if s != step]
    return f", e.g. --step {others[0]}" if others else " (this run has no other)"


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config.json; one clear error when there is none, or when this user may not read it."""
    path = epath.Path(workdir) / CONFIG_FILE
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError) as error:
        raise ConfigError(f"workdir {workdir} has no {CONFIG_FILE}; accepted: a run directory written by "
                          f"aero-train") from error
    except OSError as error:  # a run this user may not read (mode 000), a folder named config.json
        raise ConfigError(f"workdir {workdir} cannot be read ({error.strerror or type(error).__name__}: "
                          f"{error.filename or path}); accepted: a run directory this user can read") from error
    return ml_collections.ConfigDict(json.loads(text))


def _restore_target(workdir: str):
    """(config, model, a state of the right structure, a read-only Checkpointer) of a run directory."""
    config = load_run_config(workdir)
    model, _, optimizer = build(config)
    like = create_train_state(model, optimizer, jax.random.key(0))
    return config, model, like, Checkpointer(str(epath.Path(workdir) / "checkpoints"), read_only=True)


def restore_run(workdir: str, step: Optional[int] = None) -> RestoredRun:
    """The run's config and model, and its state at checkpoint `step` or (None) at its newest readable one: how every
    reader reads a run (Checkpointer.read: an unreadable newest checkpoint is skipped in one line, an unreadable
    step asked for is refused naming the readable ones)."""
    config, model, like, checkpointer = _restore_target(workdir)
    chosen, state, steps = checkpointer.read(like, step)
    return RestoredRun(config, model, chosen, jax.device_get(state), steps)


def saved_params(workdir: str) -> List[Tuple[int, dict]]:
    """(step, parameters) of every kept checkpoint, oldest first: how a learned quantity moved in training."""
    _, _, like, checkpointer = _restore_target(workdir)
    return [(step, jax.device_get(checkpointer.restore(step, like)[0].params)) for step in checkpointer.steps()]


def run_data(config: ml_collections.ConfigDict, seq_len: int):
    """(train rows, validation rows) of a run config, from the packed-data cache."""
    tokenizer = data.make_tokenizer(config.data.tokenizer, config.data.tokenizer_path or None)
    return load_data(config, tokenizer, seq_len)


def run_evaluation(run: RestoredRun, val_rows, params=None, model_state=None, model=None) -> dict:
    """`evaluate_rows` over the run's own evaluation rows (its train.eval_batch_size and train.eval_batches):
    the perplexity its summary reports, for its weights or for `params` (a fine-tune, a substitute)."""
    t = run.config.train
    return evaluate_rows(run.state.params if params is None else params,
                         run.state.model_state if model_state is None else model_state, val_rows,
                         model=model or run.model, batch_size=t.eval_batch_size, max_batches=t.eval_batches)


def run_evaluation_rows(run: RestoredRun, val_rows) -> str:
    """Which validation rows `run_evaluation` reads, in words (as the run's summary states them)."""
    t = run.config.train
    return evaluation_rows(val_rows, batch_size=t.eval_batch_size, max_batches=t.eval_batches)[1]


def evaluate_workdir(workdir: str) -> dict:
    """Validation loss, perplexity and entropy shares of the newest readable checkpoint, over the run's own
    evaluation rows: at the run's last step, the numbers of its summary.json."""
    run = restore_run(workdir)
    _, val_rows = run_data(run.config, run.model.config.max_len)
    result = run_evaluation(run, val_rows)
    out = {"workdir": workdir, "step": run.step, "architecture": architecture_label(run.config.model),
           "validation_loss": result["loss"], "validation_perplexity": result["perplexity"],
           "tokens": result["tokens"], "validation_rows": run_evaluation_rows(run, val_rows)}
    if "head_entropy" in result:
        out["head_entropy"] = result["head_entropy"].tolist()
        out["entropy_range_shares"] = entropy_range_shares(result["head_entropy"]).tolist()
    return out
