"""From a TFDS dataset split to cached, packed token rows; and n-gram baselines to compare against.

    dataset split (TFDS, ArrayRecord) -> tokenizer (batches) -> pack -> [N, T] rows streamed to disk

The rows are uint16 when the vocabulary fits (else uint32) and are read back memory-mapped, so
neither preparing nor training holds the corpus in memory.
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from aero_jax.config import ConfigError
from aero_jax.data.cache import Rows, cached_array, exclusive_lock
from aero_jax.data.packing import check_packing, pack_blocks
from aero_jax.data.shards import prepare_quietly, shards_of
from aero_jax.data.stdlib import prepare_stdlib, remove_incomplete_builds
from aero_jax.data.tokenizers import Tokenizer

BUILTIN_DATASETS = ("python_stdlib",)
MANUAL_DATASETS = ("codeparrot_ds/released", "codeparrot_ds/full", "languini_books")  # built once from manual_dir
NGRAM_ORDERS = (1, 2)
NGRAM_MAX_TARGETS = 1 << 25  # n-gram baselines fit on at most this many training targets (evenly spaced rows)
_READ_BATCH = 256  # records fetched per random-access read


def load_split(
    *,
    dataset: str,
    split: str,
    tokenizer: Tokenizer,
    seq_len: int,
    packing: str,
    data_dir: str,
    cache_dir: str,
    source_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    publish: bool = False,
) -> np.ndarray:
    """Packed token rows [N, seq_len] (uint16 or uint32) of one split, built once and then read from cache_dir.

    `source_dir` (python_stdlib only) builds the dataset from that folder of .py files instead of
    the interpreter's standard library; `manual_dir` holds the downloaded files a manual dataset
    (codeparrot_ds, languini_books) is built from the first time. A bucket cache_dir (gs://) is read through
    a copy on this host's disk; only `publish` (aero-prepare-data) tokenizes into it.
    """
    check_packing(seq_len, packing)
    source, info = _open_split_and_info(dataset, split, data_dir, source_dir or None, manual_dir or None)
    _check_carried_vocabulary(info, tokenizer, dataset)
    key = {  # only what determines the rows, read alike by the process that built the dataset and by later ones
        "dataset": dataset,
        "dataset_version": str(info.version),
        "dataset_metadata": dataset_metadata(info),
        "split": split,
        "num_documents": len(source),
        "tokenizer": tokenizer.fingerprint,
        "seq_len": seq_len,
        "packing": packing,
        "dtype": str(token_dtype(tokenizer.vocab_size)),
    }

    def build() -> Rows:
        dtype = token_dtype(tokenizer.vocab_size)
        docs = documents(source, tokenizer, desc=f"tokenizing {dataset}/{split}")
        blocks = pack_blocks(docs, seq_len, packing, tokenizer.eot_id, dtype=dtype)
        empty = (f"split {split!r} of {dataset} yields no sequences of length T={seq_len}; "
                 f"use a shorter seq_len or packing='concat'")
        return Rows((seq_len,), dtype, _at_least_one_row(blocks, empty))

    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{dataset}_{split}_T{seq_len}_{packing}")
    return cached_array(cache_dir, key, build, name=name, publish=publish)


def dataset_metadata(info: tfds.core.DatasetInfo) -> dict:
    """The dataset's recorded metadata (e.g. python_stdlib's source folder); none is {}, as TFDS reads it back
    in a later process (the building process sees None)."""
    return dict(info.metadata.items()) if isinstance(info.metadata, dict) else {}


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _at_least_one_row(blocks: Iterable[np.ndarray], message: str) -> Iterator[np.ndarray]:
    """The blocks, then ConfigError(message) if there were no rows (the half-written cache is dropped)."""
    rows = 0
    for block in blocks:
        rows += block.shape[0]
        yield block
    if rows == 0:
        raise ConfigError(message)


def ngram_perplexity(train_BxT: np.ndarray, eval_BxT: np.ndarray, *, order: int, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram (order 1) or bigram (order 2) model.

    Fit and evaluated on exactly the targets the model's loss covers: tokens at positions
    1..T-1 of each row, a bigram's context being the previous token in the same row. The model
    fit on train_BxT is evaluated on eval_BxT; a baseline to print beside the model's perplexity.
    A training set larger than NGRAM_MAX_TARGETS targets is represented by evenly spaced rows, so a
    paper-scale corpus costs a bounded amount of memory.
    """
    train_BxT = _evenly_spaced_rows(train_BxT, NGRAM_MAX_TARGETS)
    if order not in NGRAM_ORDERS:
        raise ConfigError(f"order={order!r} is invalid; accepted: {', '.join(map(str, NGRAM_ORDERS))}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ConfigError(f"vocab_size={vocab_size!r} is invalid; accepted: a positive integer")
    train_contexts, train_targets = _context_target_pairs(train_BxT, vocab_size, "train_BxT")
    eval_contexts, eval_targets = _context_target_pairs(eval_BxT, vocab_size, "eval_BxT")
    if order == 1:
        counts_V = np.bincount(train_targets, minlength=vocab_size)
        log_probs = np.log((counts_V[eval_targets] + 1.0) / (train_targets.size + vocab_size))
    else:
        train_pairs = train_contexts * vocab_size + train_targets
        pair_counts = _lookup_counts(train_pairs, eval_contexts * vocab_size + eval_targets)
        context_counts = np.bincount(train_contexts, minlength=vocab_size)[eval_contexts]
        log_probs = np.log((pair_counts + 1.0) / (context_counts + vocab_size))
    return float(np.exp(-log_probs.mean()))


def _evenly_spaced_rows(rows_BxT: np.ndarray, max_targets: int) -> np.ndarray:
    """All rows when they hold at most max_targets targets (T - 1 per row), else that many rows spread evenly."""
    rows_BxT = np.asarray(rows_BxT) if not isinstance(rows_BxT, np.ndarray) else rows_BxT
    if rows_BxT.ndim != 2 or rows_BxT.shape[0] * max(rows_BxT.shape[1] - 1, 1) <= max_targets:
        return rows_BxT
    keep = max(1, max_targets // max(rows_BxT.shape[1] - 1, 1))
    return rows_BxT[np.linspace(0, rows_BxT.shape[0] - 1, keep).astype(np.int64)]


def open_split(dataset: str, split: str, *, data_dir: str, source_dir: Optional[str] = None,
               manual_dir: Optional[str] = None):
    """A random-access source of one split's records (built when needed: python_stdlib, manual datasets)."""
    return _open_split_and_info(dataset, split, data_dir, source_dir, manual_dir)[0]


def _open_split_and_info(dataset: str, split: str, data_dir: str, source_dir: Optional[str],
                         manual_dir: Optional[str] = None):
    """(random-access source, dataset info) of a split, or of its shards joined (aero_jax/data/shards.py)."""
    builder = _open_dataset(dataset, data_dir, source_dir, manual_dir)
    names = list(builder.info.splits.keys())
    parts = [split] if split in names else shards_of(split, names)
    if not parts:
        whole = sorted({re.sub(r"_\d{3}$", "", n) for n in names})
        raise ConfigError(f"split={split!r} is invalid for {dataset}; accepted: {', '.join(whole)}")
    try:
        return builder.as_data_source(split="+".join(parts)), builder.info
    except NotImplementedError as error:  # e.g. a dataset prepared as TFRecord
        raise ConfigError(f"{dataset} in {data_dir} cannot be read by index; prepare it with "
                          f"file_format='array_record' ({error})") from error


def _open_dataset(dataset: str, data_dir: str, source_dir: Optional[str],
                  manual_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """The dataset's prepared builder; python_stdlib and manual datasets are built when needed."""
    if not data_dir:
        raise ConfigError(f"data_dir={data_dir!r} is invalid; accepted: the folder that holds (or will hold) {dataset}")
    if dataset in BUILTIN_DATASETS:
        builder = prepare_stdlib(data_dir, source_dir=source_dir)
    elif source_dir:
        raise ConfigError(f"source_dir={source_dir!r} is only used with dataset={BUILTIN_DATASETS[0]!r}, not {dataset!r}")
    elif dataset in MANUAL_DATASETS:
        builder = _built_from_manual_dir(dataset, data_dir, manual_dir)
    elif manual_dir:
        raise ConfigError(f"manual_dir={manual_dir!r} is only used with dataset={' or '.join(MANUAL_DATASETS)}, "
                          f"not {dataset!r}")
    else:
        builder = _prepared_builder(dataset, data_dir)
    return builder


def _built_from_manual_dir(dataset: str, data_dir: str, manual_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    """A manual dataset's builder, prepared from `manual_dir` the first time (one builder at a time)."""
    builder = tfds.builder(dataset, data_dir=data_dir)
    if builder.is_prepared():  # readers stop here: nothing is written to a prepared data_dir
        return builder
    if not manual_dir:
        raise ConfigError(f"dataset={dataset!r} is not prepared in {data_dir}; accepted: data.manual_dir=<folder of "
                          f"the downloaded files> to build it once (aero-prepare-data)")
    manual_dir = os.path.expanduser(manual_dir)
    builder.split_files(manual_dir)  # a missing, empty or foreign folder fails here, before anything is written
    if "://" in data_dir:
        raise ConfigError(f"data_dir={data_dir} is a bucket; accepted: a local data_dir to build {dataset} in (copy "
                          f"the built folder to the bucket afterwards)")
    name = dataset.split("/")[0]
    os.makedirs(data_dir, exist_ok=True)
    with exclusive_lock(os.path.join(data_dir, f"{name}.lock")):
        remove_incomplete_builds(os.path.join(data_dir, *dataset.split("/")))
        builder = tfds.builder(dataset, data_dir=data_dir)  # another process may have built it meanwhile
        if not builder.is_prepared():
            prepare_quietly(builder, download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def _prepared_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of a dataset already prepared under data_dir, or an error listing what is there."""
    if not tfds.core.Path(data_dir).is_dir():  # local or gs://
        raise ConfigError(
            f"data_dir={data_dir!r} does not exist; datasets other than {', '.join(BUILTIN_DATASETS)} "
            f"must be prepared there first"
        )
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise ConfigError(
            f"dataset={dataset!r} is not prepared in {data_dir}; accepted: "
            f"{', '.join(BUILTIN_DATASETS + _prepared_names(data_dir))}"
        )
    return builder


def _prepared_names(data_dir: str) -> Tuple[str, ...]:
    """Names (with config, if any) of the datasets prepared under data_dir."""
    root = tfds.core.Path(data_dir)
    infos = [*root.glob("*/*/dataset_info.json"), *root.glob("*/*/*/dataset_info.json")]
    return tuple(sorted({os.fspath(info.parent.parent.relative_to(root)) for info in infos}))


def text_batches(source, *, desc: str) -> Iterator[list]:
    """The `text` feature of every record, in order and in batches, decoded as UTF-8, with a progress bar."""
    return _batches(source, lambda records: _sized([_text_of(r) for r in records]), desc=desc)


def documents(source, tokenizer: Tokenizer, *, desc: str) -> Iterator[np.ndarray]:
    """Every document's token ids, in order: tokenized a batch at a time, or as stored (pre-tokenized `tokens`)."""
    def ids(records):
        if records and "tokens" in records[0]:
            batch = [np.asarray(r["tokens"], dtype=np.int32) for r in records]
            largest = max((int(b.max()) for b in batch if b.size), default=0)
            if largest >= tokenizer.vocab_size:
                raise ConfigError(f"a stored document holds token id {largest}; accepted: ids below the "
                                  f"{tokenizer.kind} tokenizer's {tokenizer.vocab_size}")
            return batch, sum(b.size for b in batch) * 2 / 1e6  # as stored: uint16
        texts_, megabytes = _sized([_text_of(r) for r in records])
        return tokenizer.encode_batch(texts_), megabytes

    return (doc for batch in _batches(source, ids, desc=desc) for doc in batch)


def _sized(texts_: list):
    return texts_, sum(len(t) for t in texts_) / 1e6  # characters: bytes for the ASCII of source code


def _batches(source, convert, *, desc: str) -> Iterator[list]:
    """convert(records) -> (items, megabytes) for every batch of records, in order, with a progress bar in
    documents/s and MB/s: on a terminal only, and erased when done, so a failure still ends in one line."""
    started, megabytes = time.perf_counter(), 0.0
    with tqdm(total=len(source), desc=desc, unit="doc", disable=None, leave=False) as progress:
        for start in range(0, len(source), _READ_BATCH):
            records = source.__getitems__(list(range(start, min(start + _READ_BATCH, len(source)))))
            items, size = convert(records)
            yield items
            megabytes += size
            progress.set_postfix_str(f"{megabytes / max(time.perf_counter() - started, 1e-9):.1f} MB/s", refresh=False)
            progress.update(len(records))


def _text_of(record) -> str:
    if "text" not in record:
        raise ConfigError(f"records have features {sorted(record)}; accepted: a dataset with a 'text' feature")
    text = record["text"]
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _check_carried_vocabulary(info: tfds.core.DatasetInfo, tokenizer: Tokenizer, dataset: str) -> None:
    """A pre-tokenized dataset names its vocabulary; the tokenizer must be that one."""
    metadata = dataset_metadata(info)
    if "vocab_size" not in metadata:
        return
    carried = (int(metadata["vocab_size"]), int(metadata["end_of_document"]))
    if (tokenizer.vocab_size, tokenizer.eot_id) != carried:
        raise ConfigError(f"{dataset} is tokenized with {metadata.get('vocabulary')} ({carried[0]} ids, end of "
                          f"document {carried[1]}), not with the {tokenizer.kind} tokenizer's {tokenizer.vocab_size} "
                          f"ids (end of text {tokenizer.eot_id}); accepted: data.tokenizer=sentencepiece with its "
                          f"model as data.tokenizer_path")


def _context_target_pairs(tokens_BxT: np.ndarray, vocab_size: int, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(previous token, target) int64 [B * (T - 1)] for every position the loss covers."""
    tokens_BxT = np.asarray(tokens_BxT)
    if tokens_BxT.ndim != 2 or tokens_BxT.shape[0] < 1 or tokens_BxT.shape[1] < 2:
        raise ConfigError(f"{name} has shape {tokens_BxT.shape}; accepted: [B >= 1, T >= 2] token rows")
    if tokens_BxT.min() < 0 or tokens_BxT.max() >= vocab_size:
        raise ConfigError(f"{name} holds ids {tokens_BxT.min()}..{tokens_BxT.max()}; accepted: 0..{vocab_size - 1}")
    tokens_BxT = tokens_BxT.astype(np.int64)
    return tokens_BxT[:, :-1].reshape(-1), tokens_BxT[:, 1:].reshape(-1)


def _lookup_counts(train_codes: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """How often each query code occurs among the train codes (sparse: no V x V table)."""
    codes, counts = np.unique(train_codes, return_counts=True)
    slots = np.minimum(np.searchsorted(codes, query_codes), codes.size - 1)
    return np.where(codes[slots] == query_codes, counts[slots], 0)
