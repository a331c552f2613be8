"""Large splits as shards: TFDS shuffles a split in memory up to 1 GB and then spills it to disk through
TensorFlow's file API, which this package does not install. A builder of a large dataset therefore writes
each split as contiguous shards `<split>_000`, `<split>_001`, ... of at most SHARD_BYTES each (memory stays
bounded, TensorFlow is never needed), and readers ask for `<split>` (the pipeline joins the shards).
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

import tensorflow_datasets as tfds

SHARD_BYTES = 128 << 20


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over files the user downloaded (manual_dir), stored as ArrayRecord, its splits as shards."""

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}"


def shards_of(split: str, names: Iterable[str]) -> List[str]:
    """The shard names of `split` among a dataset's split names, in order."""
    return sorted(n for n in names if re.fullmatch(rf"{re.escape(split)}_\d{{3}}", n))


def shard_ranges(sizes: Sequence[int], max_bytes: Optional[int] = None) -> List[Tuple[int, int]]:
    """Contiguous [start, stop) item ranges whose sizes add up to at most max_bytes (default SHARD_BYTES; an
    item above it stands alone)."""
    max_bytes = SHARD_BYTES if max_bytes is None else max_bytes
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total and total + size > max_bytes:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    return ranges + [(start, len(sizes))] if sizes else [(0, 0)]
