"""Where a run's metrics go: metrics.jsonl, TensorBoard event files (tensorboardX) and the console.

The workdir may be local or remote (gs://, through etils.epath; TensorBoard through tensorboardX's
own GCS writer). Remote object stores cannot append, so there metrics.jsonl is rewritten whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import List, Mapping, Optional, Tuple

import numpy as np
from etils import epath

from aero_jax.workdir import write_text_atomically

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value):
    """A JSON-ready number or list from a host array or scalar."""
    array = np.asarray(value)
    return array.tolist() if array.ndim else array.item()


def read_metrics(workdir: str):
    """Every record of a run's metrics.jsonl, in order; a last line a running trainer is still writing is left out."""
    lines = [line for line in (epath.Path(workdir) / METRICS_FILE).read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    if lines:
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(lines[-1]))
    return records


def metric_series(workdir: str, kind: str, key: str) -> Tuple[List[int], List]:
    """(steps, values) of one metric of a run's metrics.jsonl records of a kind ("train" or "eval"); none without
    the file."""
    if not (epath.Path(workdir) / METRICS_FILE).exists():  # local or gs://
        return [], []
    records = [r for r in read_metrics(workdir) if r["kind"] == kind and r.get(key) is not None]
    return [r["step"] for r in records], [r[key] for r in records]


class RunLog:
    """Appends one JSON record per log step; mirrors scalars (and per-layer vectors) to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / METRICS_FILE
        self._remote = "://" in str(workdir)
        self._lines: List[str] = []
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(epath.Path(workdir) / TENSORBOARD_DIR))
            if self.path.exists():
                self._lines = [line for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites what the lost steps had logged."""
        if not self.enabled:
            return
        self._lines = [line for line in self._lines if json.loads(line)["step"] <= step]
        write_text_atomically(self.path, "".join(line + "\n" for line in self._lines))

    def last_record(self, step: int, *, kind: str) -> Optional[dict]:
        """The newest record of `kind` logged at `step`, or None."""
        for line in reversed(self._lines):
            record = json.loads(line)
            if record["step"] == step and record["kind"] == kind:
                return record
        return None

    def write(self, step: int, metrics: Mapping, *, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
        line = json.dumps(record)
        self._lines.append(line)
        if self._remote:
            self.path.write_text("".join(text + "\n" for text in self._lines))
        else:
            with self.path.open("a") as f:
                f.write(line + "\n")
        for name, value in record.items():
            if name in ("step", "kind") or value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if values and isinstance(values[0], list):  # matrices stay in the JSON record only
                continue
            for i, v in enumerate(values):
                tag = f"{kind}/{name}" if len(values) == 1 and not isinstance(value, list) else f"{kind}/{name}/{i}"
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(tag, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def console(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
