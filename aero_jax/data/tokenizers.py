"""Tokenizers: raw UTF-8 bytes (the default, no file needed), a BPE `tokenizer.json`, or a SentencePiece model.

`aero-tokenizer train` (tokenizer_training.py) makes a BPE file from a dataset split.

Every tokenizer has `vocab_size`, `eot_id` (the end-of-text id used by packing), `fingerprint`
(part of the cache key, so a changed tokenizer never reuses old token arrays), `kind`, and
`encode(text) -> int32 [n]`, `encode_batch(texts) -> [int32 [n], ...]` (threaded for BPE) and
`decode(ids) -> str`.
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Protocol, Sequence

import numpy as np
import sentencepiece
import tokenizers

from aero_jax.config import ConfigError

TOKENIZER_KINDS = ("byte", "bpe", "sentencepiece")
END_OF_DOCUMENT_PIECE = "<D>"  # Languini's end-of-document piece
EOT_TOKEN = "<|endoftext|>"


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    kind: str
    vocab_size: int
    eot_id: int

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0-255 as tokens, plus end-of-text 256: no vocabulary file, nothing unknown."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    @property
    def fingerprint(self) -> str:
        return "byte-v1"

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of `text` as int32 ids."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; end-of-text shows as <|endoftext|>, broken UTF-8 as U+FFFD."""
        ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids_N.size and (ids_N.min() < 0 or ids_N.max() > self.eot_id):
            raise ConfigError(f"byte token ids must lie in 0..{self.eot_id}; got {ids_N.min()}..{ids_N.max()}")
        pieces = np.split(ids_N, np.flatnonzero(ids_N == self.eot_id))
        texts = [bytes(p[p != self.eot_id].astype(np.uint8)).decode("utf-8", errors="replace") for p in pieces]
        return EOT_TOKEN.join(texts)


class BPETokenizer:
    """A `tokenizers` JSON file (e.g. GPT-2's); it must define the <|endoftext|> token."""

    kind = "bpe"

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._tokenizer = _load_tokenizer_file(self.path)
        eot_id = self._tokenizer.token_to_id(EOT_TOKEN)
        if eot_id is None:
            raise ConfigError(f"tokenizer file {self.path} has no {EOT_TOKEN} token; packing needs it as end-of-text")
        self.eot_id = int(eot_id)
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        self._fingerprint = _file_sha256(self.path)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as int32, without special tokens (packing adds end-of-text)."""
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        """`encode` of every text, the tokenizers library spreading the batch over its threads."""
        return [np.asarray(e.ids, dtype=np.int32)
                for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text, special tokens kept visible."""
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)


class SentencePieceTokenizer:
    """A SentencePiece model (e.g. Languini's books_16384.model); end-of-text is its <D> piece, else its eos."""

    kind = "sentencepiece"

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ConfigError(f"SentencePiece model {self.path} does not exist; pass the path of a .model file")
        try:
            self._model = sentencepiece.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as error:
            raise ConfigError(f"SentencePiece model {self.path} does not load ({str(error).splitlines()[0]}); "
                              f"accepted: a .model file written by sentencepiece") from error
        self.vocab_size = int(self._model.get_piece_size())
        document = self._model.piece_to_id(END_OF_DOCUMENT_PIECE)
        self.eot_id = int(document if document != self._model.unk_id() else self._model.eos_id())
        if self.eot_id < 0:
            raise ConfigError(f"SentencePiece model {self.path} has neither {END_OF_DOCUMENT_PIECE} nor an eos piece; "
                              f"packing needs an end-of-text id")
        self._fingerprint = _file_sha256(self.path)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._model.encode(text), dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._model.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._model.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def make_tokenizer(kind: str, path: Optional[str] = None) -> Tokenizer:
    """The tokenizer named by a config: "byte" (no path), "bpe" (a tokenizer.json), "sentencepiece" (a .model)."""
    if kind == "byte":
        if path is not None:
            raise ConfigError(f"tokenizer path={path!r} is only used with kind='bpe' or 'sentencepiece'; the byte "
                              f"tokenizer needs none")
        return ByteTokenizer()
    if kind == "bpe":
        if not path:
            raise ConfigError("tokenizer kind='bpe' needs path=<tokenizer.json>")
        return BPETokenizer(os.path.expanduser(path))
    if kind == "sentencepiece":
        if not path:
            raise ConfigError("tokenizer kind='sentencepiece' needs path=<model file>, e.g. Languini's "
                              "books_16384.model")
        return SentencePieceTokenizer(os.path.expanduser(path))
    raise ConfigError(f"tokenizer kind={kind!r} is invalid; accepted: {', '.join(TOKENIZER_KINDS)}")


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Refuse a model whose embedding table does not match the tokenizer's ids."""
    if model_vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"model vocab_size={model_vocab_size} does not match the {tokenizer.kind} tokenizer's "
            f"{tokenizer.vocab_size}; set model.vocab_size={tokenizer.vocab_size}"
        )


def _load_tokenizer_file(path: str) -> tokenizers.Tokenizer:
    """The parsed tokenizer, or one clear error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise ConfigError(f"tokenizer file {path} does not exist; pass the path of a tokenizer.json")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the Rust binding raises a bare Exception on bad JSON
        raise ConfigError(f"tokenizer file {path} is not a valid tokenizers JSON file: {error}") from error


def _file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
