"""Where a run's metrics go: metrics.jsonl, TensorBoard event files (tensorboardX) and the console."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value):
    """A JSON-ready number or list from a host array or scalar."""
    array = np.asarray(value)
    return array.tolist() if array.ndim else array.item()


def read_metrics(workdir: str):
    """Every record of a run's metrics.jsonl, in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


class RunLog:
    """Appends one JSON record per log step; mirrors scalars (and per-layer vectors) to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites what the lost steps had logged."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping, *, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
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
