"""load_split end to end on small folders (and once on the real stdlib); n-gram baselines by hand."""

import math
import os
import re

import numpy as np
import pytest

from aero_jax.config import ConfigError
from aero_jax.data import ByteTokenizer, PythonStdlib, load_split, ngram_perplexity, pack
from aero_jax.data import pipeline, shards
from aero_jax.data.stdlib import split_of

SOURCE_TEXTS = {p: f"# {p}\n" + "value = 12345\n" * (i + 1)
                for i, p in enumerate(f"m{i}.py" for i in range(60))}
VALIDATION = sorted(p for p in SOURCE_TEXTS if split_of(p) == "validation")


class StdlibSample(PythonStdlib, skip_registration=True):
    """The same builder under another name, standing in for a dataset prepared elsewhere."""


@pytest.fixture
def source_dir(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for path, text in SOURCE_TEXTS.items():
        (folder / path).write_text(text)
    return folder


@pytest.fixture
def builtin(source_dir, tmp_path):
    """load_split's arguments for python_stdlib built from a small folder."""
    return dict(dataset="python_stdlib", tokenizer=ByteTokenizer(), data_dir=str(tmp_path / "data"),
                cache_dir=str(tmp_path / "cache"), source_dir=str(source_dir))


def test_sample_has_both_splits():
    assert VALIDATION and len(VALIDATION) < len(SOURCE_TEXTS)


def test_load_split_tokenizes_packs_and_caches(builtin, monkeypatch):
    rows = load_split(split="validation", seq_len=16, packing="concat", **builtin)
    docs = [np.frombuffer(SOURCE_TEXTS[p].encode(), np.uint8) for p in VALIDATION]
    np.testing.assert_array_equal(rows, pack(docs, 16, "concat", eot_id=256))
    assert rows.dtype == np.uint16 and isinstance(rows, np.memmap)  # 257 ids fit in 16 bits
    monkeypatch.setattr(pipeline, "pack_blocks", lambda *a, **k: pytest.fail("rebuilt instead of reusing the cache"))
    np.testing.assert_array_equal(load_split(split="validation", seq_len=16, packing="concat", **builtin), rows)


def test_each_setting_gets_its_own_cache(builtin):
    chunk = load_split(split="train", seq_len=16, packing="chunk", **builtin)
    concat = load_split(split="train", seq_len=16, packing="concat", **builtin)
    longer = load_split(split="train", seq_len=32, packing="chunk", **builtin)
    assert chunk.shape[1] == 16 and longer.shape[1] == 32 and concat.shape[0] > chunk.shape[0]
    assert len([f for f in os.listdir(builtin["cache_dir"]) if f.endswith(".npy")]) == 3


def test_a_dataset_prepared_elsewhere_is_read_from_data_dir(source_dir, tmp_path):
    data_dir = str(tmp_path / "data")
    StdlibSample(data_dir=data_dir, source_dir=str(source_dir)).download_and_prepare()
    rows = load_split(dataset="stdlib_sample", split="validation", tokenizer=ByteTokenizer(), seq_len=8,
                      packing="chunk", data_dir=data_dir, cache_dir=str(tmp_path / "cache"))
    docs = [np.frombuffer(SOURCE_TEXTS[p].encode(), np.uint8) for p in VALIDATION]
    np.testing.assert_array_equal(rows, pack(docs, 8, "chunk", eot_id=256))
    with pytest.raises(ConfigError, match="accepted: python_stdlib, stdlib_sample"):
        load_split(dataset="lm1b_missing", split="train", tokenizer=ByteTokenizer(), seq_len=8,
                   packing="chunk", data_dir=data_dir, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(split="test"), "split='test' is invalid for python_stdlib; accepted: train, validation"),
        (dict(seq_len=4096), "split 'validation' of python_stdlib yields no sequences of length T=4096; "
                             "use a shorter seq_len or packing='concat'"),
        (dict(packing="pad"), "accepted: chunk, concat"),
        (dict(data_dir=""), "data_dir='' is invalid"),
        (dict(dataset="other", source_dir=None, data_dir="/nonexistent/data"), "does not exist"),
        (dict(dataset="other"), "is only used with dataset='python_stdlib'"),
    ],
)
def test_bad_requests_get_one_clear_error(builtin, changes, message):
    arguments = {**builtin, "split": "validation", "seq_len": 16, "packing": "chunk", **changes}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_split(**arguments)
    cache_dir = builtin["cache_dir"]
    assert not os.path.isdir(cache_dir) or not [f for f in os.listdir(cache_dir) if f.endswith(".npy")]


def test_ngram_perplexity_matches_a_hand_computed_example():
    train_BxT = np.array([[0, 1, 0, 1]])  # targets 1 0 1; bigrams (0,1) (1,0) (0,1)
    eval_BxT = np.array([[2, 0], [2, 2]])  # targets 0 and 2; bigrams (2,0) and (2,2), never across rows
    # unigram: p(v) = (count + 1) / (3 + V) with counts 0:1 1:2 2:0 -> p(0) = 2/6, p(2) = 1/6
    assert ngram_perplexity(train_BxT, eval_BxT, order=1, vocab_size=3) == pytest.approx(math.sqrt(18))
    # bigram: p(v|u) = (count(u,v) + 1) / (count(u,.) + V); context 2 never seen -> 1/3 each
    assert ngram_perplexity(train_BxT, eval_BxT, order=2, vocab_size=3) == pytest.approx(3.0)
    # the first column is context only: p(1|0) = 3/5, p(0|1) = 2/4
    expected = math.exp(-(math.log(3 / 5) + math.log(2 / 4)) / 2)
    assert ngram_perplexity(train_BxT, np.array([[0, 1, 0]]), order=2, vocab_size=3) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(order=3, vocab_size=3), "order=3 is invalid; accepted: 1, 2"),
        (dict(order=1, vocab_size=2), "ids 0..2; accepted: 0..1"),
        (dict(order=1, vocab_size=0), "vocab_size=0"),
    ],
)
def test_ngram_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ngram_perplexity(np.array([[0, 1, 2]]), np.array([[0, 1, 2]]), **kwargs)


def test_the_real_stdlib_end_to_end(tmp_path):
    """The embedded default: about 30 MB of bytes on CPython 3.11, prepared and packed in seconds."""
    arguments = dict(dataset="python_stdlib", tokenizer=ByteTokenizer(), seq_len=128, packing="chunk",
                     data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    train_BxT = load_split(split="train", **arguments)
    eval_BxT = load_split(split="validation", **arguments)
    assert train_BxT.shape[0] > 40 * eval_BxT.shape[0] > 0 and eval_BxT.max() < 256
    unigram = ngram_perplexity(train_BxT, eval_BxT, order=1, vocab_size=257)
    bigram = ngram_perplexity(train_BxT, eval_BxT, order=2, vocab_size=257)
    assert 15 < unigram < 45 and 6 < bigram < unigram


def test_ngram_baselines_of_a_large_training_set_use_evenly_spaced_rows(monkeypatch):
    rows = np.full((100, 5), 7, dtype=np.uint16)
    rows[90:] = np.arange(5)  # the last tenth differs
    evaluation = np.arange(5, dtype=np.uint16)[None]
    exact = ngram_perplexity(rows, evaluation, order=1, vocab_size=8)
    monkeypatch.setattr(pipeline, "NGRAM_MAX_TARGETS", 40)  # 10 of the 100 rows, spread over all of them
    sampled = ngram_perplexity(rows, evaluation, order=1, vocab_size=8)
    assert exact == pytest.approx(408 / 11) and sampled == pytest.approx(48 / 2)  # add-one: 11 of 408, 2 of 48
    assert pipeline._evenly_spaced_rows(rows, 40).shape == (10, 5)


SHARDS = [([], [(0, 0)]), ([2, 3, 4], [(0, 3)]), ([5, 5, 5], [(0, 2), (2, 3)]), ([6, 6, 6], [(0, 1), (1, 2), (2, 3)]),
          ([3, 4, 20, 1, 2], [(0, 2), (2, 3), (3, 5)])]


@pytest.mark.parametrize("sizes, ranges", SHARDS)
def test_shards_are_contiguous_and_hold_at_most_the_limit(sizes, ranges):
    assert shards.shard_ranges(sizes, max_bytes=10) == ranges
    assert shards.shards_of("train", ["validation_000", "train_001", "train_000", "train_x"]) == ["train_000",
                                                                                             "train_001"]
