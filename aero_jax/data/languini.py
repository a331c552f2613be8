"""languini_books: the Languini Kitchen books, pre-tokenized with its 16,384-piece SentencePiece vocabulary.

Languini (languini-kitchen/languini-kitchen) distributes a script, not tokens: it downloads the books3
archive, tokenizes every book with `languini/vocabs/spm_models/books_16384.model` into one uint16 .npy
array per book (`data/books/books_16384/files/<book>.npy`, no end-of-document token inside), and fetches
the split lists `data/books/file_list_<split>.npy`, rows of (path, token count). Its trainer joins the
books of a stream with end-of-document id 2 (`<D>`); `packing="concat"` with that id does the same.
The builder stores each book's ids as they are (no text, no re-tokenization): train from
`file_list_train.npy`, validation from `file_list_test_iid.npy` (Languini's iid test set).
"""

from __future__ import annotations

import os
import pickle
from typing import Dict, Iterator, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from aero_jax.config import ConfigError
from aero_jax.data.shards import ManualBuilder, damage_refused, shard_name, shard_ranges

VOCABULARY = "books_16384"
VOCAB_SIZE = 16384
END_OF_DOCUMENT = 2  # <D> in books_16384.model
SPLIT_LISTS = {"train": "file_list_train.npy", "validation": "file_list_test_iid.npy"}
_COMPLETE = "a complete tokenization (languini/dataset_lib/integrity_test.py checks it)"
_NPY_DAMAGE = (ValueError, EOFError, OSError, pickle.UnpicklingError)  # np.load of a cut-short or foreign file

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Tokenize the books with Languini's own script (it downloads books3, about 37 GB, and the split lists),
then pass its data/books folder as data.manual_dir:

    git clone https://github.com/languini-kitchen/languini-kitchen && cd languini-kitchen
    pip install -e . && bash languini/dataset_lib/easy_download_and_tokenise.sh
    python3 languini/dataset_lib/integrity_test.py data/books/{VOCABULARY}

The folder then holds {", ".join(SPLIT_LISTS.values())} and {VOCABULARY}/files/*.npy. The SentencePiece
model for decoding is languini/vocabs/spm_models/{VOCABULARY}.model (data.tokenizer_path).
"""


class LanguiniBooks(ManualBuilder):
    """Books as token ids of Languini's books_16384 vocabulary (name and ids)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and iid-test books, ids as Languini's tokenizer wrote them."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({"tokens": tfds.features.Tensor(shape=(None,), dtype=np.uint16),
                                                 "name": tfds.features.Text()}),
            homepage="https://github.com/languini-kitchen/languini-kitchen",
            metadata=tfds.core.MetadataDict(vocabulary=VOCABULARY, vocab_size=VOCAB_SIZE,
                                            end_of_document=END_OF_DOCUMENT),
        )

    @staticmethod
    def split_files(manual_dir: str) -> Dict[str, List[str]]:
        """The book files of each split, from Languini's lists; one clear error for a missing list or book."""
        return {split: book_paths(manual_dir, name) for split, name in SPLIT_LISTS.items()}

    def _split_generators(self, dl_manager) -> Dict[str, Iterator[Tuple[str, dict]]]:
        """Each split as shards of about SHARD_BYTES of ids, in the list's order."""
        generators = {}
        for split, paths in self.split_files(os.fspath(dl_manager.manual_dir)).items():
            ranges = shard_ranges([os.path.getsize(p) for p in paths])
            generators.update({shard_name(split, k): self._generate_examples(paths[start:stop])
                               for k, (start, stop) in enumerate(ranges)})
        return generators

    def _generate_examples(self, paths: List[str]) -> Iterator[Tuple[str, dict]]:
        for path in paths:
            with damage_refused(path, _NPY_DAMAGE, _COMPLETE):
                ids = np.load(path, mmap_mode="r")
            if ids.ndim != 1 or ids.dtype != np.uint16 or (ids.size and int(ids.max()) >= VOCAB_SIZE):
                raise ConfigError(f"book {path} holds {ids.dtype} {ids.shape}; accepted: 1-D uint16 ids below "
                                  f"{VOCAB_SIZE} ({VOCABULARY})")
            yield path, {"tokens": np.asarray(ids), "name": os.path.basename(path)}  # the path: a unique key


def book_paths(manual_dir: str, list_name: str) -> List[str]:
    """The books a split list names, in its order, under manual_dir/books_16384."""
    list_path = os.path.join(manual_dir, list_name)
    if not os.path.isfile(list_path):
        raise ConfigError(f"manual folder {manual_dir} has no {list_name}; accepted: Languini's data/books folder "
                          f"({', '.join(SPLIT_LISTS.values())} and {VOCABULARY}/files/*.npy)")
    with damage_refused(list_path, _NPY_DAMAGE, _COMPLETE):
        rows = np.load(list_path, allow_pickle=True)
    listed = [str(row) for row in rows] if rows.ndim == 1 else [str(row[0]) for row in rows]  # paths, or (path, n)
    books = os.path.join(manual_dir, VOCABULARY)
    paths = [_book_path(books, path) for path in listed]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(paths)} books in {list_path} are missing, e.g. {missing[0]}; "
                          f"accepted: {_COMPLETE}")
    return paths


def _book_path(books: str, listed: str) -> str:
    """Languini joins its data path with the listed path; lists may also name the bare file."""
    joined = os.path.join(books, listed)
    return joined if os.path.isfile(joined) else os.path.join(books, "files", os.path.basename(listed))
