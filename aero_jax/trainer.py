"""The training loop: data, jitted steps, metrics, evaluation, checkpoints, exact resume.

A workdir is the unit of work: config.json, checkpoints/, metrics.jsonl, tensorboard/, eval/ and
summary.json live there, and rerunning the same command resumes from the newest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from aero_jax import data, distributed, flops, sharding
from aero_jax.checkpoint import Checkpointer, all_finite
from aero_jax.config import ConfigError, ModelConfig, architecture_differences
from aero_jax.errors import RunFailed
from aero_jax.model import AeroLM
from aero_jax.optim import adamw, learning_rate_schedule
from aero_jax.run_config import (RESUMABLE_FIELDS, architecture_label, config_changes, model_config_from,
                                 resumable, validate)
from aero_jax.run_log import RunLog, console
from aero_jax.train_step import LossScale, TrainState, create_train_state, eval_step, jit_train_step
from aero_jax.workdir import make_workdir, workdir_lock, write_text_atomically

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"


class Divergence(RunFailed):
    """The loss became non-finite and the recovery policy could not (or was told not to) recover."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


class _StopSignal:
    """Turns SIGTERM/SIGINT (preemption, Ctrl-C) into a flag the loop checks between steps.

    With several processes, JAX's preemption sync point decides instead, so that every host
    saves the same step; the handlers are then left to JAX.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if jax.process_count() > 1:
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resume_changes(workdir: str, config: ml_collections.ConfigDict, model_config: ModelConfig) -> list:
    """[(field, old, new)] this config changes in the run saved in `workdir`. A checkpoint of another architecture
    is refused; so is another training config once a step was trained under the saved one, unless RESUMABLE_FIELDS
    allows the change. Each refusal names every differing field."""
    path = epath.Path(workdir) / CONFIG_FILE
    newest = _newest_checkpoint(workdir)
    if not path.exists() or newest is None:  # nothing saved yet: the new config starts the run
        return []
    saved = json.loads(path.read_text())
    differences = architecture_differences(model_config_from(saved["model"]), model_config)
    if differences:
        listed = ", ".join(f"{k}={old!r} (this config: {new!r})" for k, old, new in differences)
        raise ConfigError(f"workdir {workdir} holds another architecture: {listed}; "
                          f"accepted: the same model config, or a new --workdir")
    changes = config_changes(saved, config)
    refused = [(field, old, new) for field, old, new in changes if not resumable(field)]
    if refused and newest > 0:  # at step 0 (an imported model, say) no step was trained under the saved config
        listed = ", ".join(f"{field}={old!r} (this config: {new!r})" for field, old, new in refused)
        raise ConfigError(f"workdir {workdir} was trained with another config: {listed}; accepted on resume: changes "
                          f"to {', '.join(f + '*' if f.endswith('.') else f for f in RESUMABLE_FIELDS)}, "
                          f"or a new --workdir")
    return changes


def _newest_checkpoint(workdir: str) -> Optional[int]:
    """The newest step with a checkpoint folder in `workdir` (read or not), None when there is none."""
    folder = epath.Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
    return max(steps, default=None)


def _record_config(workdir: str, config: ml_collections.ConfigDict, changes: list, *, step: int) -> None:
    """Write config.json, the config in force; the changes a resume made are first appended to
    config_changes.jsonl with the step from which they apply, so how earlier steps were trained stays known."""
    if jax.process_index() != 0:
        return
    if changes:
        history = epath.Path(workdir) / CONFIG_CHANGES_FILE
        record = {"step": step, "changes": {field: {"from": old, "to": new} for field, old, new in changes}}
        earlier = history.read_text() if history.exists() else ""
        write_text_atomically(history, earlier + json.dumps(record) + "\n")
        listed = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in changes)
        console(f"resuming at step {step} with {listed} (recorded in {CONFIG_CHANGES_FILE})")
    write_text_atomically(epath.Path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))


def checked_tokenizer(config, model_config: ModelConfig):
    """The run's tokenizer; a model whose vocabulary differs from it is refused, naming both sizes."""
    tokenizer = data.make_tokenizer(config.data.tokenizer, config.data.tokenizer_path or None)
    data.check_vocab(tokenizer, model_config.vocab_size)
    return tokenizer


def load_data(config, tokenizer, seq_len: int, *, publish: bool = False):
    """(train rows, validation rows) packed for the run's data section (`publish`: fill a bucket cache_dir)."""
    d = config.data
    common = dict(dataset=d.dataset, tokenizer=tokenizer, seq_len=seq_len, packing=d.packing,
                  data_dir=os.path.expanduser(d.data_dir), cache_dir=os.path.expanduser(d.cache_dir),
                  source_dir=os.path.expanduser(d.source_dir) if d.source_dir else None,
                  manual_dir=os.path.expanduser(d.manual_dir) if d.get("manual_dir") else None, publish=publish)
    return data.load_split(split="train", **common), data.load_split(split="validation", **common)


EVAL_SAMPLE_SEED = 0  # fixed, not the run's seed: every run over the same split reads the same rows


def evaluation_rows(rows_NxT: np.ndarray, *, batch_size: int, max_batches: int) -> Tuple[np.ndarray, str]:
    """(the validation rows every evaluation of a run reads, what they are, in words): the whole split in whole
    batches when `max_batches` <= 0 or covers it, else `max_batches` batches of rows drawn at random once (seed
    EVAL_SAMPLE_SEED), in split order. A sample, not a prefix: the first rows of a split are one file, not the split."""
    whole = len(rows_NxT) // batch_size
    if whole < 1:
        raise ConfigError(f"validation split has {len(rows_NxT)} sequences, fewer than one batch of "
                          f"{batch_size}; accepted: a smaller train.eval_batch_size")
    if max_batches <= 0 or max_batches >= whole:
        return rows_NxT[:whole * batch_size], (f"the whole validation split ({whole * batch_size:,} of "
                                               f"{len(rows_NxT):,} sequences, whole batches)")
    count = max_batches * batch_size
    chosen = np.random.default_rng(EVAL_SAMPLE_SEED).choice(len(rows_NxT), count, replace=False)
    return rows_NxT[np.sort(chosen)], (f"a fixed random sample of {count:,} of the {len(rows_NxT):,} validation "
                                       f"sequences (seed {EVAL_SAMPLE_SEED}: the same rows for every run with this "
                                       f"split and sample size)")


@functools.lru_cache(maxsize=16)
def jitted_eval_step(model: AeroLM):
    """eval_step jitted once per model (a Module hashes by its config): repeated evaluations of one model, as a
    substitute report or a temperature intervention makes, compile once."""
    return jax.jit(functools.partial(eval_step, model=model))


def evaluate_rows(params, model_state, rows_NxT: np.ndarray, *, model: AeroLM, batch_size: int,
                  max_batches: int, eval_fn=None, put=jnp.asarray) -> dict:
    """Validation loss, perplexity and head-entropy matrix over the run's evaluation rows (`evaluation_rows`).

    The one evaluation of the project: training, aero-eval, aero-ln-substitute and the studies all call it with
    the run's train.eval_batch_size and train.eval_batches. `put` turns a batch of rows (the same on every
    process) into the device array.
    """
    eval_fn = eval_fn or jitted_eval_step(model)
    rows_NxT, _ = evaluation_rows(rows_NxT, batch_size=batch_size, max_batches=max_batches)
    total = None
    for i in range(len(rows_NxT) // batch_size):
        sums = eval_fn(params, model_state, put(rows_NxT[i * batch_size:(i + 1) * batch_size].astype(np.int32)))
        total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    total = jax.device_get(total)
    loss = float(total["ce_sum"] / total["tokens"])
    result = {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": int(total["tokens"])}
    if "head_entropy_sum" in total:
        result["head_entropy"] = total["head_entropy_sum"] / total["sequences"]
    return result


def build(config: ml_collections.ConfigDict):
    """(model, learning-rate schedule, optimizer) of a run config."""
    o = config.optim
    schedule = learning_rate_schedule(o.peak_lr, config.train.num_steps, warmup_fraction=o.warmup_fraction,
                                      decay=o.decay, end_fraction=o.end_lr_fraction, power=o.power)
    optimizer = adamw(schedule, weight_decay=o.weight_decay, clip_norm=o.clip_norm, b1=o.b1, b2=o.b2, eps=o.eps,
                      decay_embeddings=o.decay_embeddings, decay_grouping=o.decay_grouping)
    return AeroLM(model_config_from(config.model)), schedule, optimizer


@dataclasses.dataclass(frozen=True)
class Program:
    """What a run executes on a mesh: its model, the sharded layout of its state and its jitted steps.

    aero-train runs these steps; aero-compile lowers the very same ones for a TPU topology.
    """

    model: AeroLM
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    mesh: Mesh
    init: Callable[[], TrainState]
    state_shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Callable
    eval_step: Callable

    def abstract_state(self) -> TrainState:
        """The train state as sharded shapes: what compiling needs, without allocating it."""
        return jax.tree_util.tree_map(lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
                                      jax.eval_shape(self.init), self.state_shardings)

    def abstract_batch(self, batch_size: int) -> jax.ShapeDtypeStruct:
        """A global [batch_size, max_len] batch of token ids as a sharded shape."""
        return jax.ShapeDtypeStruct((batch_size, self.model.config.max_len), jnp.int32, sharding=self.batch_sharding)


def build_program(config: ml_collections.ConfigDict, devices: Optional[Sequence] = None) -> Program:
    """The model, sharded state layout and jitted train and eval steps of a config, on `devices` (default: all)."""
    t = config.train
    model, schedule, optimizer = build(config)
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    rules = dict(config.sharding_rules)
    sharding.check_rules(rules)
    sharding.check_batch_divisible(t.batch_size // t.grad_accum_steps, mesh, "train.batch_size per accumulation "
                                   "step", rules)
    sharding.check_batch_divisible(t.eval_batch_size, mesh, "train.eval_batch_size", rules)
    loss_scale = (LossScale.create(t.loss_scale_init, t.loss_scale_growth_interval)
                  if model.config.dtype == "float16" else None)
    init = functools.partial(create_train_state, model, optimizer, jax.random.key(config.seed), loss_scale)
    state_shardings = sharding.tree_shardings(jax.eval_shape(init), mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    model = model.clone(activation_sharding=sharding.activation_sharding(mesh, rules))
    replicated = sharding.replicated(mesh)
    train_fn = jit_train_step(model, optimizer, schedule=schedule, accum_steps=t.grad_accum_steps,
                              state_shardings=state_shardings, batch_sharding=batch_sharding,
                              metrics_sharding=replicated)
    eval_fn = jax.jit(functools.partial(eval_step, model=model),
                      in_shardings=(state_shardings.params, state_shardings.model_state, batch_sharding),
                      out_shardings=replicated)
    return Program(model, schedule, optimizer, mesh, init, state_shardings, batch_sharding, train_fn, eval_fn)


SUMMED_METRICS = ("nonfinite_attention", "skipped_updates")  # counts over a logging window
LAST_METRICS = ("loss_scale",)  # the value in force at the window's end


def window_metrics(window) -> dict:
    """One record for a logging window of step metrics: counts summed, the loss scale at its end, every other
    metric the mean over the steps whose loss is finite (a skipped float16 step's may not be)."""
    finite = [w for w in window if np.isfinite(w["loss"])] or window
    return {k: np.sum([w[k] for w in window], axis=0) if k in SUMMED_METRICS else
            window[-1][k] if k in LAST_METRICS else np.mean([w[k] for w in finite], axis=0) for k in window[0]}


class Trainer:
    """One run of one config in one workdir; `run()` trains to the end or to a stop signal."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate(config)
        self.config, self.workdir = config, workdir
        self.model_config = model_config_from(config.model)
        tokenizer = checked_tokenizer(config, self.model_config)
        make_workdir(workdir)
        changes = _resume_changes(workdir, config, self.model_config)
        self.train_rows, self.val_rows = load_data(config, tokenizer, self.model_config.max_len)

        program = build_program(config)
        self.model, self.schedule, self.optimizer = program.model, program.schedule, program.optimizer
        self.mesh, self.state_shardings = program.mesh, program.state_shardings
        self.batch_sharding = program.batch_sharding
        self.step_fn, self.eval_fn = program.train_step, program.eval_step
        self.state = jax.jit(program.init, out_shardings=self.state_shardings)()  # born sharded
        t = config.train
        self.checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints,
                                        fingerprint=t.checkpoint_fingerprints)
        self.log = RunLog(workdir, enabled=jax.process_index() == 0)
        self.data_offset, self.recoveries = 0, 0
        self.divergence_cause = "non-finite loss"
        self.resumed_from = self._restore_latest()
        _record_config(workdir, config, changes, step=self.resumed_from or 0)

    # -- state ---------------------------------------------------------------------------------

    def _restore_latest(self) -> Optional[int]:
        restored = self.checkpoints.restore_latest(self.state)
        if restored is None:
            self.log.truncate_after(0)  # records of a run that died before its first checkpoint
            return None
        step, self.state, meta = restored
        self.data_offset, self.recoveries = meta["data_offset"], meta["recoveries"]
        self.log.truncate_after(step)
        console(f"resumed from the checkpoint at step {step} in {self.workdir}")
        return step

    def _save(self, step: int) -> None:
        meta = {"data_offset": self.data_offset, "recoveries": self.recoveries,
                "lr_scale": float(self.state.lr_scale)}
        self.checkpoints.save(step, self.state, meta)

    def batch_for(self, step: int) -> np.ndarray:
        """The rows of the global batch at `step`: a pure function of (seed, step, data offset)."""
        t = self.config.train
        indices = data.batch_indices(self.config.seed, step + self.data_offset, t.batch_size, len(self.train_rows),
                                     process_index=jax.process_index(), process_count=jax.process_count())
        return self.train_rows[indices].astype(np.int32)  # the cache holds uint16 or uint32

    # -- divergence ----------------------------------------------------------------------------

    def _handle_divergence(self, step: int) -> int:
        """Stop, or roll back to the last good checkpoint past the diverging data; returns the new step.

        Each retry backs off from where the run stands, not from the checkpoint: the learning-rate
        scale is multiplied again and the data offset grows past every window that diverged.
        """
        r = self.config.recovery
        self.checkpoints.wait()  # a save still in flight is the last good checkpoint
        last_good = self.checkpoints.steps()[-1] if self.checkpoints.steps() else None
        indices = data.batch_indices(self.config.seed, step + self.data_offset, self.config.train.batch_size,
                                     len(self.train_rows)).tolist()
        bad_path = epath.Path(self.workdir) / f"nonfinite_batch_step{step}.json"
        if self.log.enabled:
            bad_path.write_text(json.dumps({"step": step, "data_step": step + self.data_offset, "indices": indices}))
        where = f"last good checkpoint: step {last_good}" if last_good is not None else "no checkpoint yet"
        if r.policy == "stop" or last_good is None or self.recoveries >= r.max_recoveries:
            advice = ("--config.recovery.policy=rollback" if r.policy == "stop"
                      else "more --config.recovery.max_recoveries")
            advice += ", or start a new --workdir with a lower --config.optim.peak_lr" + (
                " or --config.model.dtype=bfloat16" if self.state.loss_scale is not None else "")
            raise Divergence(f"{self.divergence_cause} at step {step} ({where}; the batch's indices are in {bad_path}); "
                             f"recovery.policy={r.policy!r}, recoveries used {self.recoveries}/{r.max_recoveries}; "
                             f"to go on, rerun with {advice}", step=step)
        lr_scale = float(self.state.lr_scale) * r.lr_factor
        self.state, _ = self.checkpoints.restore(last_good, self.state)
        self.data_offset += step + 1 - last_good
        self.recoveries += 1
        self.state = self.state.replace(lr_scale=jax.device_put(np.float32(lr_scale), self.state_shardings.lr_scale))
        console(f"{self.divergence_cause} at step {step}: rolled back to step {last_good}, skipping {step + 1 - last_good} "
                f"batches, learning-rate scale {float(self.state.lr_scale):.3g} (recovery {self.recoveries}"
                f"/{r.max_recoveries})")
        self.log.truncate_after(last_good)
        return last_good

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train to train.num_steps (or until SIGTERM/SIGINT), evaluating and saving on schedule."""
        t = self.config.train
        step = int(self.state.step)
        tokens_per_step = t.batch_size * self.model_config.max_len
        window, pending, compile_s = [], None, None
        window_start, window_steps = time.perf_counter(), 0  # timing excludes compilation and evaluation
        bar = tqdm(total=t.num_steps, initial=step, disable=None if self.log.enabled else True, unit="step")
        if step >= t.num_steps:  # a finished run: report its last evaluation again
            self.last_eval = self.log.last_record(step, kind="eval") or self._evaluate(step, bar)
        with _StopSignal() as stop:
            while step < t.num_steps:
                started = time.perf_counter()
                batch = sharding.put_local_batch(self.batch_for(step), self.batch_sharding)
                self.state, metrics = self.step_fn(self.state, batch)
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - started
                    window_start = time.perf_counter()
                else:
                    window_steps += 1
                diverged = self._collect(pending, window)  # the previous step's metrics, fetched late
                pending, step = (step, metrics), step + 1
                at_end = step == t.num_steps
                if distributed.reached_preemption_point(step):  # every host stops at this same step
                    stop.received = signal.SIGTERM
                stopping = stop.received is not None  # read once: a signal may land mid-iteration
                boundary = (at_end or stopping
                            or any(step % every == 0 for every in (t.log_every, t.eval_every, t.checkpoint_every)))
                if diverged is None and boundary:
                    diverged, pending = self._collect(pending, window), None
                saving = step % t.checkpoint_every == 0 or at_end or stopping
                if diverged is None and saving and not bool(all_finite(self.state.params)):
                    diverged = step - 1  # a finite loss, but its update made the parameters non-finite
                    self.divergence_cause = "non-finite parameters"
                if diverged is not None:
                    step, window, pending = self._handle_divergence(diverged), [], None
                    window_start, window_steps = time.perf_counter(), 0
                    bar.reset(total=t.num_steps)
                    bar.update(step)
                    continue
                bar.update(1)
                if window and (step % t.log_every == 0 or at_end or stopping):
                    elapsed = time.perf_counter() - window_start
                    speed = tokens_per_step * window_steps / elapsed if window_steps else None  # None: compile only
                    self._log_train(step, window, speed, compile_s, bar)
                    window, window_start, window_steps = [], time.perf_counter(), 0
                if step % t.eval_every == 0 or at_end:
                    eval_started = time.perf_counter()
                    self._evaluate(step, bar)
                    window_start += time.perf_counter() - eval_started
                if saving:
                    self._save(step)  # the parameters were checked finite above
                if stopping:
                    console(f"received {signal.Signals(stop.received).name}: saved the checkpoint at step {step}; "
                            f"rerun the same command to resume")
                    break
        bar.close()
        self.checkpoints.wait()
        return self._finish(step, stopped=stop.received is not None)

    def _collect(self, pending, window) -> Optional[int]:
        """Fetch a step's metrics; the step number if the run diverged there, else None.

        A run diverges at a non-finite loss, except where a loss scale skipped the update (it acts first), and
        where the loss scale fell to zero: every update is then skipped, whatever the scale.
        """
        if pending is None:
            return None
        step, metrics = pending
        host = jax.device_get(metrics)
        skipped = bool(host.get("skipped_updates", 0))
        if skipped and host["loss_scale"] == 0:
            self.divergence_cause = "the loss scale fell to zero (every update's gradients were non-finite)"
            return step
        if not skipped and not np.isfinite(host["loss"]):
            self.divergence_cause = "non-finite loss"
            return step
        window.append(host)
        return None

    def _log_train(self, step: int, window, tokens_per_s: float, compile_s: float, bar) -> None:
        metrics = window_metrics(window)
        metrics["perplexity"] = math.exp(min(float(metrics["ce"]), 80.0))
        if "head_entropy" in metrics:
            metrics["layer_entropy"] = metrics.pop("head_entropy").mean(axis=-1)
        metrics.update(tokens_per_s=tokens_per_s, compile_time_s=compile_s, step_time_s=None, mfu=None)
        if tokens_per_s:
            device = jax.devices()[0]
            metrics.update(step_time_s=self.config.train.batch_size * self.model_config.max_len / tokens_per_s,
                           mfu=flops.mfu(tokens_per_s, self.model_config, device.device_kind, jax.device_count()))
        self.log.write(step, metrics)
        if self.log.enabled:
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", ppl=f"{metrics['perplexity']:.3f}")
            if bar.disable:
                speed = f"{tokens_per_s:,.0f} tokens/s" if tokens_per_s else f"compiled in {compile_s:.1f} s"
                console(f"step {step}: loss {float(metrics['loss']):.4f} ppl {metrics['perplexity']:.3f} {speed}")

    def _evaluate(self, step: int, bar) -> dict:
        t = self.config.train
        result = evaluate_rows(self.state.params, self.state.model_state, self.val_rows, model=self.model,
                               batch_size=t.eval_batch_size, max_batches=t.eval_batches, eval_fn=self.eval_fn,
                               put=functools.partial(sharding.put_global_batch, sharding=self.batch_sharding))
        if self.log.enabled and "head_entropy" in result:
            folder = epath.Path(self.workdir) / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"head_entropy_step{step}.npy").open("wb") as f:
                np.save(f, result["head_entropy"])
        self.log.write(step, result, kind="eval")
        if self.log.enabled:
            bar.write(f"step {step}: validation loss {result['loss']:.4f}, perplexity {result['perplexity']:.3f}")
        self.last_eval = result
        return result

    def _finish(self, step: int, *, stopped: bool) -> dict:
        summary = {"step": step, "stopped_by_signal": stopped, "workdir": self.workdir,
                   "architecture": architecture_label(self.config.model)}
        if not stopped:
            vocab, t = self.model_config.vocab_size, self.config.train
            rows, described = evaluation_rows(self.val_rows, batch_size=t.eval_batch_size, max_batches=t.eval_batches)
            summary.update(
                validation_loss=self.last_eval["loss"], validation_perplexity=self.last_eval["perplexity"],
                validation_rows=described,
                unigram_perplexity=data.ngram_perplexity(self.train_rows, rows, order=1, vocab_size=vocab),
                bigram_perplexity=data.ngram_perplexity(self.train_rows, rows, order=2, vocab_size=vocab))
            if self.log.enabled:
                write_text_atomically(epath.Path(self.workdir) / "summary.json", json.dumps(summary, indent=2))
        self.log.close()
        self.checkpoints.close()
        return summary


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the run of `config` in `workdir`, holding its lock; returns the run's summary.

    Only process 0 of a multi-process run takes the lock: the others follow its lead.
    """
    validate(config)
    make_workdir(workdir)
    lock = workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return Trainer(config, workdir).run()
