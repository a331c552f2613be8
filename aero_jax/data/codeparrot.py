"""codeparrot_ds: the data of the papers' released training code, built from files the user downloaded.

The released `run_clm.py` trains on `huggingface-course/codeparrot-ds-train` shuffled with seed 0,
its first num_token_mult x 100,000 documents (600,000 in the released scripts), and validates on
`huggingface-course/codeparrot-ds-valid` shuffled with seed 0, its first 2,000; the text is the
`content` field. Config `released` makes exactly that selection (the shuffle of the `datasets`
library is numpy's default_rng(seed).permutation over the documents in file order); config `full`
keeps every document. Nothing is downloaded at run time: the builder reads a manual folder.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from aero_jax.config import ConfigError
from aero_jax.data.shards import ManualBuilder, damage_refused, shard_name, shard_ranges

FORMATS = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
SPLIT_FOLDERS = {"train": "codeparrot-ds-train", "validation": "codeparrot-ds-valid"}
TEXT_FIELD = "content"
RELEASED_SEED = 0
_IGNORED = ("README.md", ".gitattributes", "dataset_info.json", "dataset_infos.json", "state.json")  # hub metadata
_ACCEPTED = f"records with a string '{TEXT_FIELD}' field"
_REDOWNLOAD = "the complete published file (download it again)"
_COMPRESSION = 4  # how much larger than its file a compressed file's text is taken to be, when sizing shards

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download the two dataset repositories as they are published into one folder, then pass it as
data.manual_dir (or --manual_dir to `tfds build`):

    pip install -U "huggingface_hub[cli]"
    huggingface-cli download huggingface-course/codeparrot-ds-train --repo-type dataset \\
        --local-dir MANUAL_DIR/{SPLIT_FOLDERS["train"]}
    huggingface-cli download huggingface-course/codeparrot-ds-valid --repo-type dataset \\
        --local-dir MANUAL_DIR/{SPLIT_FOLDERS["validation"]}

Each folder may hold the files as parquet or as JSON lines (plain or gzipped); the format is
detected from the file names ({", ".join(FORMATS)}).
"""


class CodeparrotDsConfig(tfds.core.BuilderConfig):
    """How many documents of each split to keep after the seed-0 shuffle (None: all of them)."""

    def __init__(self, *, train_documents: Optional[int], validation_documents: Optional[int], **kwargs):
        super().__init__(**kwargs)
        self.documents = {"train": train_documents, "validation": validation_documents}


class CodeparrotDs(ManualBuilder):
    """Python files of the codeparrot-ds datasets (text and index in the published order)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The released selection and the full splits, from parquet or JSON lines."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        CodeparrotDsConfig(name="released", description="run_clm.py's selection: 600,000 train and 2,000 "
                           "validation documents after a seed-0 shuffle", train_documents=600_000,
                           validation_documents=2_000),
        CodeparrotDsConfig(name="full", description="every document of both splits", train_documents=None,
                           validation_documents=None),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "index": tfds.features.Scalar(dtype=np.int64)}),
            homepage="https://huggingface.co/datasets/huggingface-course/codeparrot-ds-train",
        )

    @staticmethod
    def split_files(manual_dir: str) -> Dict[str, List[str]]:
        """The data files of each split in a manual folder; one clear error when a split has none."""
        return {split: data_files(os.path.join(manual_dir, folder)) for split, folder in SPLIT_FOLDERS.items()}

    def _split_generators(self, dl_manager) -> Dict[str, Iterator[Tuple[int, dict]]]:
        """Each split as shards of about SHARD_BYTES of text, contiguous in the published order."""
        generators = {}
        for split, paths in self.split_files(os.fspath(dl_manager.manual_dir)).items():
            counts = [count_records(p) for p in paths]
            selected = released_selection(sum(counts), self.builder_config.documents[split])
            sizes = [0 if selected is not None and not selected[i] else size
                     for i, size in enumerate(_estimated_text_bytes(paths, counts))]
            for k, (start, stop) in enumerate(shard_ranges(sizes)):
                generators[shard_name(split, k)] = self._generate_examples(paths, counts, selected, start, stop)
        return generators

    def _generate_examples(self, paths: List[str], counts: List[int], selected: Optional[np.ndarray], start: int,
                           stop: int) -> Iterator[Tuple[int, dict]]:
        """Documents [start, stop) of the split in file order (the released selection's only)."""
        first = 0
        for path, count in zip(paths, counts):
            if first < stop and first + count > start:
                for index, text in enumerate(read_texts(path), start=first):
                    if index >= stop:
                        break
                    if index >= start and (selected is None or selected[index]):
                        yield index, {"text": text, "index": index}  # TFDS hashes the keys: shuffled buckets
            first += count


def _estimated_text_bytes(paths: List[str], counts: List[int]) -> List[int]:
    """A size per document for cutting shards: its file's bytes shared evenly (compressed files x4)."""
    sizes = []
    for path, count in zip(paths, counts):
        factor = 1 if path.endswith((".jsonl", ".json")) else _COMPRESSION
        sizes += [os.path.getsize(path) * factor // max(count, 1)] * count
    return sizes


def released_selection(total: int, keep: Optional[int]) -> Optional[np.ndarray]:
    """[total] bool: the documents `Dataset.shuffle(seed=0).select(range(keep))` takes (None: all)."""
    if keep is None or keep >= total:
        return None
    selected = np.zeros(total, dtype=bool)
    selected[np.random.default_rng(RELEASED_SEED).permutation(total)[:keep]] = True
    return selected


def data_files(folder: str) -> List[str]:
    """The data files under a split folder in name order, or one clear error for a missing, empty or foreign one."""
    if not os.path.isdir(folder):
        raise ConfigError(f"manual folder {folder} does not exist; accepted: a folder holding the published files "
                          f"({', '.join(FORMATS)}); see the download commands in aero_jax/data/codeparrot.py")
    found, other = [], []
    for parent, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))  # e.g. the hub's .cache
        for name in names:
            if name.startswith(".") or name in _IGNORED:
                continue
            (found if name.endswith(FORMATS) else other).append(os.path.join(parent, name))
    if not found:
        what = f"holds only {', '.join(sorted(os.path.relpath(p, folder) for p in other)[:5])}" if other else "is empty"
        raise ConfigError(f"manual folder {folder} {what}; accepted: files named *{', *'.join(FORMATS)}")
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def count_records(path: str) -> int:
    """How many documents a data file holds (parquet: from its footer; JSON lines: one pass)."""
    if path.endswith(".parquet"):
        return _parquet(path).metadata.num_rows
    return sum(1 for _, line in _lines(path) if line.strip())


def read_texts(path: str) -> Iterator[str]:
    """The `content` of every record of a data file, in order; a record without a string `content` is refused."""
    if path.endswith(".parquet"):
        yield from _parquet_texts(path)
        return
    for number, line in _lines(path):
        if line.strip():
            yield _content(_record(line, path, number), path, number)


def _parquet_texts(path: str) -> Iterator[str]:
    """The `content` column of a parquet file, a batch of rows at a time; a null is refused with its row (from 1)."""
    import pyarrow as pa  # lazy: 0.5 s to import, and only the parquet files need it

    parquet = _parquet(path)
    schema = parquet.schema_arrow
    if TEXT_FIELD not in schema.names:
        raise ConfigError(f"{path} has columns {', '.join(schema.names)}; accepted: {_ACCEPTED}")
    kind = schema.field(TEXT_FIELD).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ConfigError(f"{path} has a '{TEXT_FIELD}' column of type {kind}; accepted: {_ACCEPTED}")
    row = 0
    with damage_refused(path, (pa.ArrowException, OSError), _REDOWNLOAD, lambda: f" after {row} rows"):
        for batch in parquet.iter_batches(batch_size=1024, columns=[TEXT_FIELD]):
            column = batch.column(0)
            if column.null_count:
                null = row + column.is_null().to_pylist().index(True) + 1
                raise ConfigError(f"{path} row {null} has '{TEXT_FIELD}': null; accepted: {_ACCEPTED}")
            yield from column.to_pylist()
            row += len(column)


def _parquet(path: str):
    """The open parquet file; one that is not parquet or is cut short is refused naming it."""
    import pyarrow as pa  # lazy: 0.5 s to import, and only the parquet files need it
    import pyarrow.parquet as pq

    with damage_refused(path, (pa.ArrowException, OSError), _REDOWNLOAD):
        return pq.ParquetFile(path)


def _lines(path: str) -> Iterator[Tuple[int, bytes]]:
    """(number from 1, line) of a JSON lines file, plain or gzipped; a truncated or damaged gzip file is refused."""
    number = 0
    with damage_refused(path, (EOFError, zlib.error, OSError), _REDOWNLOAD, lambda: f" after {number} lines"):
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                yield number, line


def _record(line: bytes, path: str, number: int):
    """One line's JSON value; a line that is not UTF-8 or not JSON is refused with its number."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} line {number} is not UTF-8 (byte {line[error.start]:#04x} at byte "
                          f"{error.start + 1} of the line); accepted: JSON lines in UTF-8") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} line {number} is not JSON ({error.msg}); accepted: one JSON object per "
                          f"line") from error


def _content(record, path: str, line: int) -> str:
    """A record's `content`; a missing, null or non-string one means a foreign or damaged file and is refused."""
    if not isinstance(record, dict) or TEXT_FIELD not in record:
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(f"{path} line {line} has no '{TEXT_FIELD}' field (found: {fields}); accepted: {_ACCEPTED}")
    text = record[TEXT_FIELD]
    if not isinstance(text, str):
        raise ConfigError(f"{path} line {line} has '{TEXT_FIELD}': {json.dumps(text)[:40]}; accepted: {_ACCEPTED}")
    return text
