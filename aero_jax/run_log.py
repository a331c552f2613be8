"""Where a run's metrics go: metrics.jsonl, TensorBoard event files (tensorboardX) and the console.

The workdir may be local or remote (gs://, through etils.epath; TensorBoard through tensorboardX's
own GCS writer). Remote object stores cannot append, so there metrics.jsonl is rewritten whole.

Every reader of metrics.jsonl (aero-report, aero-study, the exporter, a resumed trainer) parses it with
`parse_records`: a damaged line is refused in one line naming the file and the line number (exit status 2),
except the last line, which a run killed while writing it (or a trainer still writing it) leaves cut short: that
one is skipped, with one warning line on the console.
"""

from __future__ import annotations

import json
import math
import sys
from typing import List, Mapping, Optional, Set, Tuple

import numpy as np
from etils import epath

from aero_jax.errors import ConfigError
from aero_jax.workdir import write_text_atomically

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value):
    """A JSON-ready number or list from a host array or scalar."""
    array = np.asarray(value)
    return array.tolist() if array.ndim else array.item()


_WARNED: Set[Tuple[str, int, str]] = set()  # cut-short last lines already reported by this process


def parse_records(text: str, path) -> List[Tuple[dict, str]]:
    """(record, its line) of every record of a metrics.jsonl's text, in order.

    A line that is no JSON record ({"step": int, "kind": str, ...}) is refused as a ConfigError naming `path`
    and the line number; only an unreadable last line, cut short by a run stopped while writing it, is
    skipped, with one warning on the console (once per process).
    """
    numbered = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    parsed = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if index == len(numbered) - 1:
                if (str(path), number, line) not in _WARNED:
                    _WARNED.add((str(path), number, line))
                    console(f"{path} line {number} is cut short (a run stopped while writing it); skipped it")
                break
            raise _damaged(path, number, f"not JSON: {error.msg} at column {error.colno}") from error
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                and isinstance(record.get("kind"), str)):
            raise _damaged(path, number, "not a record with a step and a kind")
        parsed.append((record, line))
    return parsed


def _damaged(path, number: int, why: str) -> ConfigError:
    return ConfigError(f"{path} is damaged at line {number} ({why}); accepted: one JSON record a line, as aero-train "
                       f"writes them (only the last line may be cut short); remove or repair line {number}")


def read_metrics(workdir: str):
    """Every record of a run's metrics.jsonl, in order (see `parse_records`: a last line cut short, or that a
    running trainer is still writing, is left out)."""
    path = epath.Path(workdir) / METRICS_FILE
    return [record for record, _ in parse_records(path.read_text(), path)]


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
        self._records: List[Tuple[dict, str]] = []  # (record, its line) of every line in the file
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # lazy: 1.7 s to import, and only a writing run needs it

            self._tb = SummaryWriter(str(epath.Path(workdir) / TENSORBOARD_DIR))
            if self.path.exists():  # a damaged line is refused here, before the run trains
                self._records = parse_records(self.path.read_text(), self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites what the lost steps had logged."""
        if not self.enabled:
            return
        self._records = [(record, line) for record, line in self._records if record["step"] <= step]
        write_text_atomically(self.path, "".join(line + "\n" for _, line in self._records))

    def last_record(self, step: int, *, kind: str) -> Optional[dict]:
        """The newest record of `kind` logged at `step`, or None."""
        for record, line in reversed(self._records):
            if record["step"] == step and record["kind"] == kind:
                return json.loads(line)  # the record as written, the caller's own copy
        return None

    def write(self, step: int, metrics: Mapping, *, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
        line = json.dumps(record)
        self._records.append((record, line))
        if self._remote:
            self.path.write_text("".join(text + "\n" for _, text in self._records))
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
