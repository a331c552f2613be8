"""Checkpoints of the training state with orbax: keep the last K, fall back past a corrupt one."""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from aero_jax.run_log import console


class Checkpointer:
    """A CheckpointManager over `directory` (local path or gs://) saving state plus JSON metadata."""

    def __init__(self, directory: str, *, keep: int = 3):
        if "://" not in directory:
            directory = os.path.abspath(directory)  # orbax accepts absolute paths only
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(directory, options=options)

    def steps(self):
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> Tuple[Any, dict]:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored.state, dict(restored.meta)

    def restore_latest(self, like: Any) -> Optional[Tuple[int, Any, dict]]:
        """The newest checkpoint that restores; an unreadable one is reported and moved aside.

        Moving it (to `<step>.unreadable`) keeps its files for inspection and lets the resumed
        run save that step again.
        """
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, like)
            except Exception as error:  # orbax raises many types for unreadable files
                reason = str(error).splitlines()[0] if str(error) else ""
                aside = self._move_aside(step)
                console(f"checkpoint at step {step} is unreadable ({type(error).__name__}: {reason}); "
                        f"moved to {aside}; trying the previous one")
                continue
            return step, state, meta
        return None

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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
