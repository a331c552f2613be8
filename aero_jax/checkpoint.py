"""Checkpoints of the training state with orbax: keep the last K, verify on restore, fall back past a bad one.

Each save records a fingerprint of every leaf of the state (computed on the device, see
`fingerprints`; `fingerprint=False` skips it) in the checkpoint's JSON metadata; a restore
recomputes it and refuses a checkpoint whose bytes changed, or whose parameters are not finite. A trainer moves a bad
checkpoint aside (`<step>.unreadable`) and uses the previous one (`restore_latest`); every reader
chooses its checkpoint with `read`, which never changes the directory: it skips a bad newest
checkpoint, saying so in one line, and refuses a bad step asked for, naming the readable ones.
Listing and reading tolerate a training run that deletes old checkpoints meanwhile.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from aero_jax.errors import ConfigError, RunFailed, no_space
from aero_jax.run_log import console

CHECKSUMS = "checksums"
DELETION_WAIT_S = 2.0  # how long a failed read waits to tell a checkpoint being deleted from a damaged one
READ_PATIENCE_S = 60.0  # how long a reader goes on after a training run deleted what it read, before it gives up
REASON_CHARS = 200  # the longest reason a message quotes for an unreadable checkpoint


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that reads, but not as it was written."""


class Checkpointer:
    """A CheckpointManager over `directory` (local path or gs://) saving state plus JSON metadata."""

    def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False, fingerprint: bool = True):
        if "://" not in directory:
            directory = os.path.abspath(directory)  # orbax accepts absolute paths only
        self.directory = epath.Path(directory)
        self.read_only, self.fingerprint = read_only, fingerprint
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self._manager = _while_steps_vanish(lambda: ocp.CheckpointManager(directory, options=options))
        self._in_flight: Optional[int] = None
        _drop_complaints_of_abandoned_reads()  # before any read: they may come while a failure is still raised

    def steps(self, *, reload: bool = False):
        """The saved steps, oldest first; `reload` lists the folder again (another process may have changed it)."""
        if reload:
            _while_steps_vanish(self._manager.reload)
        return sorted(self._manager.all_steps())

    def deleted_while_read(self, step: int, *, newest_asked: bool) -> bool:
        """After a failed restore: was `step` being deleted by a training run (which keeps only the newest few)?

        A newer step saved meanwhile is enough when the newest was asked for; otherwise the step's folder must
        disappear within DELETION_WAIT_S, as a deletion in progress ends (a damaged checkpoint stays).
        """
        deadline = time.monotonic() + DELETION_WAIT_S
        while True:
            steps = self.steps(reload=True)
            if step not in steps or (newest_asked and steps[-1] > step):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save of `state` with `meta` and the state's fingerprints."""
        if self.fingerprint:
            meta = {**meta, CHECKSUMS: fingerprints(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.wait()  # orbax waits for the previous save anyway; a failure of it is named as its own
        self._in_flight = step
        with self._failures_named():
            self._manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> Tuple[Any, dict]:
        """The state and metadata saved at `step`; CorruptCheckpoint if they are not what was saved."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        meta = dict(restored.meta)
        verify(restored.state, meta.pop(CHECKSUMS, None))
        return restored.state, meta

    def restore_latest(self, like: Any) -> Optional[Tuple[int, Any, dict]]:
        """A trainer's resume: the newest checkpoint that restores and verifies; a bad one is reported and moved to
        `<step>.unreadable`, keeping its files for inspection and letting the resumed run save that step again."""
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, like)
            except Exception as error:  # orbax raises many types for unreadable files
                console(f"checkpoint at step {step} is unreadable ({why_unreadable(error)}); moved to "
                        f"{self._move_aside(step)}; trying the previous one")
                continue
            return step, state, meta
        return None

    def read(self, like: Any, step: Optional[int] = None) -> Tuple[int, Any, Tuple[int, ...]]:
        """(step, state, the steps listed) of checkpoint `step`, or (None) of the newest one that reads: how every
        reader chooses its checkpoint; the directory is never changed.

        Newer unreadable checkpoints (damaged, or half deleted) are skipped and named in one line on stderr; a step
        asked for is that step or one ConfigError naming the readable ones. A checkpoint that a training run deletes
        while it is read (it keeps only the newest few) is no damage: the steps are listed again, for up to
        READ_PATIENCE_S.
        """
        unreadable: Dict[int, str] = {}  # step: why it does not read
        patience = time.monotonic() + READ_PATIENCE_S
        while time.monotonic() < patience:
            steps = self.steps(reload=True)
            chosen = self._next_to_read(steps, step, unreadable, like)
            try:
                state, _ = self.restore(chosen, like)
            except Exception as error:  # orbax raises many types for unreadable files; verify raises CorruptCheckpoint
                if not self.deleted_while_read(chosen, newest_asked=step is None and chosen == steps[-1]):
                    unreadable[chosen] = why_unreadable(error)
                continue
            if unreadable:
                console(skipped_note(unreadable, chosen))
            return chosen, state, tuple(steps)
        raise RunFailed(f"the checkpoints in {self.directory} were deleted faster than they could be read for "
                        f"{READ_PATIENCE_S:.0f} s; rerun, or train with more train.keep_checkpoints")

    def _next_to_read(self, steps: List[int], step: Optional[int], unreadable: Dict[int, str], like: Any) -> int:
        """The step `read` tries next: `step` itself, or the newest not found unreadable; a ConfigError when none
        is left."""
        if not steps:
            raise ConfigError(f"{self.directory} has no checkpoint; accepted: a run directory with at least one saved "
                              f"step")
        if step is not None and step not in steps:
            raise ConfigError(f"step {step} has no checkpoint in {self.directory}; accepted: "
                              f"{', '.join(map(str, steps))}")
        if step in unreadable:
            readable = [s for s in steps if s != step and self._reads(s, like)]
            accepted = f"a readable step: {', '.join(map(str, readable))}" if readable else \
                "a readable step (this run has none)"
            raise ConfigError(f"checkpoint {step} in {self.directory} is unreadable ({unreadable[step]}); "
                              f"accepted: {accepted}")
        left = [s for s in steps if s not in unreadable]
        if step is None and not left:
            raise ConfigError(f"no checkpoint in {self.directory} is readable (steps {', '.join(map(str, steps))}; "
                              f"step {steps[-1]}: {unreadable[steps[-1]]}); accepted: a run directory with a "
                              f"readable checkpoint")
        return left[-1] if step is None else step

    def _reads(self, step: int, like: Any) -> bool:
        """Whether checkpoint `step` restores and verifies (it is read whole: for error messages only)."""
        try:
            self.restore(step, like)
        except Exception:  # noqa: BLE001 - orbax raises many types for unreadable files
            return False
        return True

    def _move_aside(self, step: int) -> epath.Path:
        target = self.directory / f"{step}.unreadable"
        suffix = 1
        while target.exists():
            target, suffix = self.directory / f"{step}.unreadable{suffix}", suffix + 1
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        self._manager.reload()
        return target

    def wait(self) -> None:
        with self._failures_named():
            self._manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        with self._failures_named():
            self._manager.close()

    @contextlib.contextmanager
    def _failures_named(self):
        """Turn a full disk during an (asynchronous) save into one RunFailed naming the step and folder."""
        try:
            yield
        except Exception as error:
            if not no_space(error):
                raise
            what = f"the checkpoint at step {self._in_flight}" if self._in_flight is not None else "a checkpoint"
            raise RunFailed(f"no space left on device while saving {what} to {self.directory}") from error


class _AbandonedReadLogs(logging.Filter):
    """asyncio's 'Task (or Future) exception was never retrieved' for an orbax read, dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message and any(
            word in message for word in ("orbax", "OCDBT", "TensorStore")))


def _abandoned_read(error: BaseException, source: Any = None) -> bool:
    """True for the complaint of an orbax read that outlived its failed restore: its event loop is closed, or it
    is one of orbax's read coroutines, collected with its own failure."""
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    orbax_read = inspect.iscoroutine(source) and "orbax" in source.cr_code.co_filename
    return closed_loop or orbax_read


def _drop_complaints_of_abandoned_reads() -> None:
    """When a restore fails (a damaged checkpoint, or one a training run deletes while it is read), orbax's reads of
    the other arrays go on and, finishing later, each print a traceback: dozens of lines after the one that reports
    the failure. These complaints alone are dropped, from any thread, for the rest of the process."""
    if getattr(sys.excepthook, "drops_abandoned_reads", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, error, trace):  # what a library's thread prints with PyErr_Print
        if not _abandoned_read(error):
            excepthook(kind, error, trace)

    def on_unraisable(unraisable):
        if not _abandoned_read(unraisable.exc_value, unraisable.object):
            unraisablehook(unraisable)

    on_exception.drops_abandoned_reads = True
    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    logging.getLogger("asyncio").addFilter(_AbandonedReadLogs())


def _while_steps_vanish(list_steps: Callable[[], Any], attempts: int = 10) -> Any:
    """list_steps(), tried again when it fails because a step folder vanished while orbax read its metadata (a
    training run deleting an old checkpoint)."""
    for attempt in range(attempts):
        try:
            return list_steps()
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


def short_reason(error: BaseException) -> str:
    """The first line of an error's message, at most REASON_CHARS long, cut before any object repr and without
    TensorStore's specs (a thousand characters of JSON each) or driver chain: they say nothing to a user."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = re.split(r"\s*(?:details: )?<(?:bound method |function |\S+ object at 0x)", lines[0])[0] if lines else ""
    line = re.sub(r"\s*\[tensorstore_spec(?:\[\d+\])?='.*?'\]", "", line)
    line = re.sub(r'Error opening "\w+" driver: |\.?\s*See full TensorStore.*$', "", line).rstrip(" :;,(")
    return (line if len(line) <= REASON_CHARS else line[:REASON_CHARS - 3].rstrip() + "...") or "no message"


def why_unreadable(error: BaseException) -> str:
    """'Type: reason' of a failed restore, for the line that reports it."""
    return f"{type(error).__name__}: {short_reason(error)}"


def skipped_note(unreadable: Dict[int, str], used: int) -> str:
    """The one line a reader prints when it read step `used` past newer checkpoints that do not read."""
    newest = max(unreadable)
    if len(unreadable) == 1:
        return f"checkpoint at step {newest} is unreadable ({unreadable[newest]}); skipped it, read step {used}"
    listed = ", ".join(map(str, sorted(unreadable, reverse=True)))
    return (f"checkpoints at steps {listed} are unreadable (step {newest}: {unreadable[newest]}); skipped them, "
            f"read step {used}")


# -- fingerprints ----------------------------------------------------------------------------------

def fingerprints(state: Any) -> Dict[str, str]:
    """{leaf path: 8 hex digits} of a state, computed on the device where the state lives."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    values = jax.device_get(_leaf_fingerprints([leaf for _, leaf in leaves]))
    return {jax.tree_util.keystr(path): f"{int(value):08x}" for (path, _), value in zip(leaves, values)}


def verify(state: Any, recorded: Optional[Dict[str, str]]) -> None:
    """Raise CorruptCheckpoint if a leaf's fingerprint differs from the recorded one or a parameter is not finite."""
    if recorded is not None:
        found = fingerprints(state)
        changed = [path for path, value in found.items() if recorded.get(path) != value]
        if changed:
            raise CorruptCheckpoint(f"{len(changed)} array(s) differ from what was saved, first {changed[0]}")
    params = getattr(state, "params", state)
    if not bool(all_finite(params)):
        raise CorruptCheckpoint("the parameters hold non-finite values")


@jax.jit
def _leaf_fingerprints(leaves):
    return [_fingerprint(leaf) for leaf in leaves]


def _fingerprint(x: jax.Array) -> jax.Array:
    """sum_i word_i * (2 i + 1) mod 2^32 over an array's bit patterns: any single changed word changes it."""
    words = _as_words(x)
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2 ** 32)
        stride *= words.shape[axis]
    return jnp.sum(words * (position * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32)


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (8-byte elements become two words, narrower ones widen)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))
