"""Large splits as shards: TFDS shuffles a split in memory up to 1 GB and then spills it to disk through
TensorFlow's file API, which this package does not install. A builder of a large dataset therefore writes
each split as contiguous shards `<split>_000`, `<split>_001`, ... of at most SHARD_BYTES each (memory stays
bounded, TensorFlow is never needed), and readers ask for `<split>` (the pipeline joins the shards).
The builders over downloaded files also share how they refuse a damaged file and how they are built quietly.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import tensorflow_datasets as tfds

from aero_jax.config import ConfigError

SHARD_BYTES = 128 << 20


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over files the user downloaded (manual_dir), stored as ArrayRecord, its splits as shards."""

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)


def prepare_quietly(builder: tfds.core.DatasetBuilder, **kwargs) -> None:
    """builder.download_and_prepare(**kwargs) without TFDS's console output: its messages would land among a
    command's report lines on stdout, and a progress bar a failure interrupts leaves lines before its one line."""
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(**kwargs)
    finally:
        tfds.display_progress_bar(True)  # TFDS's default, for builds outside the commands


@contextlib.contextmanager
def damage_refused(path: str, errors: Tuple[type, ...], accepted: str, where: Callable[[], str] = lambda: ""):
    """`errors` of a damaged file (garbage, cut short, corrupt data) as one ConfigError naming it and `where()`;
    an OSError with an errno is the disk's, not the file's, and passes unchanged."""
    try:
        yield
    except errors as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ConfigError(f"{path} is damaged{where()} ({type(error).__name__}: {error}); accepted: "
                          f"{accepted}") from error


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
