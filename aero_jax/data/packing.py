"""Packing tokenized documents into fixed-length training rows."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from aero_jax.config import ConfigError

PACKING_MODES = ("chunk", "concat")


def pack(docs: Iterable[np.ndarray], seq_len: int, mode: str, eot_id: int) -> np.ndarray:
    """Token rows int32 [N, seq_len] cut from `docs` (1-D id arrays), in document order.

    "chunk": each document is cut into seq_len-token pieces and its shorter remainder dropped,
    as the AERO papers do; no end-of-text token, and no row mixes two documents.
    "concat": documents are joined, each followed by `eot_id`, then cut into seq_len pieces;
    only the final partial piece is dropped.

    The training loss covers positions 0..T-2 of each row predicting tokens 1..T-1 (so T - 1
    targets per row). With "concat" a row can span a document boundary: the end-of-text token
    is then a target, and the tokens after it are predicted from context that includes the
    previous document.
    """
    blocks = list(pack_blocks(docs, seq_len, mode, eot_id))
    return np.concatenate(blocks, axis=0) if blocks else np.zeros((0, seq_len), dtype=np.int32)


def pack_blocks(docs: Iterable[np.ndarray], seq_len: int, mode: str, eot_id: int, *,
                dtype=np.int32) -> Iterator[np.ndarray]:
    """The rows of `pack`, streamed: one block per document that completes a row, never more in memory.

    "concat" carries the tokens past the last full row (fewer than seq_len) into the next document.
    """
    check_packing(seq_len, mode)
    carry_N = np.zeros(0, dtype=np.int32)
    eot_1 = np.array([eot_id], dtype=np.int32)
    for doc in docs:
        ids_N = _as_ids(doc) if mode == "chunk" else np.concatenate([carry_N, _as_ids(doc), eot_1])
        rows_RxT = _whole_rows(ids_N, seq_len)
        if mode == "concat":
            carry_N = ids_N[rows_RxT.size:]
        if rows_RxT.shape[0]:
            yield rows_RxT.astype(dtype)


def _whole_rows(ids_N: np.ndarray, seq_len: int) -> np.ndarray:
    """The first N // seq_len full rows of `ids_N`, shape [N // seq_len, seq_len]."""
    num_rows = ids_N.shape[0] // seq_len
    return ids_N[: num_rows * seq_len].reshape(num_rows, seq_len)


def _as_ids(doc) -> np.ndarray:
    """One document as a 1-D int32 array."""
    ids_N = np.asarray(doc)
    if ids_N.ndim != 1:
        raise ConfigError(f"each document must be a 1-D array of token ids; got shape {ids_N.shape}")
    return ids_N.astype(np.int32, copy=False)


def check_packing(seq_len: int, mode: str) -> None:
    """Refuse a seq_len that is not a positive integer or an unknown packing mode."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ConfigError(f"seq_len={seq_len!r} is invalid; accepted: a positive integer")
    if mode not in PACKING_MODES:
        raise ConfigError(f"packing={mode!r} is invalid; accepted: {', '.join(PACKING_MODES)}")
