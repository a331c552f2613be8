"""languini_books from a tiny copy of Languini's data/books folder; its SentencePiece tokenizer; bad folders."""

import numpy as np
import pytest

from aero_jax.config import ConfigError
from aero_jax.data import ByteTokenizer, SentencePieceTokenizer, load_split
from aero_jax.data.languini import END_OF_DOCUMENT, VOCAB_SIZE, VOCABULARY
from aero_jax.data.pipeline import open_split

BOOKS = {"train": {"a.npy": 40, "b.npy": 25, "c.npy": 9}, "test_iid": {"d.npy": 30}}


class LanguiniIds:
    """The books_16384 vocabulary without its model file: ids only (load_split never encodes them)."""

    kind, vocab_size, eot_id, fingerprint = "sentencepiece", VOCAB_SIZE, END_OF_DOCUMENT, "books_16384-test"


def books_folder(root):
    files = root / VOCABULARY / "files"
    files.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, books in BOOKS.items():
        for name, length in books.items():
            written[name] = rng.integers(3, VOCAB_SIZE, length).astype(np.uint16)
            np.save(files / name, written[name])
        np.save(root / f"file_list_{split}.npy", np.array([[f"files/{n}", n_tokens] for n, n_tokens in books.items()],
                                                          dtype=object), allow_pickle=True)
    return root, written


def test_books_are_stored_as_their_ids_and_packed_with_end_of_document(tmp_path):
    manual, written = books_folder(tmp_path / "books")
    train_source = open_split("languini_books", "train", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    train = {r["name"].decode(): r["tokens"] for r in train_source}
    assert sorted(train) == ["a.npy", "b.npy", "c.npy"]
    assert all(np.array_equal(train[n], written[n]) for n in train)
    rows = load_split(dataset="languini_books", split="validation", tokenizer=LanguiniIds(), seq_len=8,
                      packing="concat", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    stream = np.concatenate([written["d.npy"], [END_OF_DOCUMENT]])
    np.testing.assert_array_equal(rows, stream[:24].reshape(3, 8))
    with pytest.raises(ConfigError, match="tokenized with books_16384 .16384 ids, end of document 2., not with the "
                                          "byte tokenizer's 257 ids"):
        load_split(dataset="languini_books", split="validation", tokenizer=ByteTokenizer(), seq_len=8,
                   packing="concat", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))


def test_missing_lists_and_books_are_refused_by_name(tmp_path):
    common = dict(split="train", tokenizer=LanguiniIds(), seq_len=8, packing="concat", data_dir=str(tmp_path / "d"),
                  cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="has no file_list_train.npy"):
        load_split(dataset="languini_books", manual_dir=str(tmp_path), **common)
    manual, _ = books_folder(tmp_path / "books")
    (manual / VOCABULARY / "files" / "b.npy").unlink()
    with pytest.raises(ConfigError, match=r"1 of the 3 books in .*file_list_train.npy are missing, e.g. .*b.npy"):
        load_split(dataset="languini_books", manual_dir=str(manual), **common)


def test_a_sentencepiece_model_gives_vocabulary_end_of_document_and_text(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the book number {i} reads well and ends" for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=300,
                                             pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["<D>"],
                                             byte_fallback=True, minloglevel=2)
    tokenizer = SentencePieceTokenizer(str(tmp_path / "spm.model"))
    assert (tokenizer.vocab_size, tokenizer.eot_id) == (300, 2)
    ids = tokenizer.encode("the book reads well")
    assert tokenizer.decode(ids) == "the book reads well" and tokenizer.encode_batch(["the book"])[0].dtype == np.int32
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="broken.model does not load"):
        SentencePieceTokenizer(str(tmp_path / "broken.model"))
