"""Checkpoints of the training state with orbax: keep the last K, fall back past a corrupt one."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """A CheckpointManager over `directory` (local path or gs://) saving state plus JSON metadata."""

    def __init__(self, directory: str, *, keep: int = 3):
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
        """The newest checkpoint that restores; a corrupt or partial one is reported and skipped."""
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, like)
            except Exception as error:  # orbax raises many types for unreadable files
                log.warning("checkpoint at step %d is unreadable (%s: %s); trying the previous one",
                            step, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                continue
            return step, state, meta
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
