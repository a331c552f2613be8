"""Packing: chunk drops remainders and never mixes documents; concat joins them with end-of-text."""

import numpy as np
import pytest

from aero_jax.config import ConfigError
from aero_jax.data import pack

EOT = 99


def _docs(*lengths):
    """Documents whose ids say where they come from: document d holds 10 * d + position."""
    return [np.arange(n, dtype=np.int64) + 10 * d for d, n in enumerate(lengths)]


def test_chunk_cuts_each_document_and_drops_remainders():
    rows = pack(_docs(7, 2, 6), seq_len=3, mode="chunk", eot_id=EOT)
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, [[0, 1, 2], [3, 4, 5], [20, 21, 22], [23, 24, 25]])


def test_concat_joins_documents_with_end_of_text_and_drops_the_partial_tail():
    rows = pack(_docs(3, 2, 4), seq_len=4, mode="concat", eot_id=EOT)
    # stream: 0 1 2 EOT 10 11 EOT 20 21 22 23 EOT -> three full rows
    np.testing.assert_array_equal(rows, [[0, 1, 2, EOT], [10, 11, EOT, 20], [21, 22, 23, EOT]])


def test_concat_keeps_every_token_but_the_tail():
    docs = _docs(5, 9, 1, 13)
    rows = pack(docs, seq_len=6, mode="concat", eot_id=EOT)
    stream = np.concatenate([np.append(d, EOT) for d in docs])
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
    assert stream.size - rows.size < 6


@pytest.mark.parametrize("mode", ["chunk", "concat"])
def test_no_documents_give_an_empty_batch_of_the_right_width(mode):
    assert pack([], seq_len=8, mode=mode, eot_id=EOT).shape == (0, 8)
    assert pack(_docs(3), seq_len=8, mode=mode, eot_id=EOT).shape == (0, 8)


def test_pack_accepts_a_generator():
    rows = pack((d for d in _docs(4, 4)), seq_len=4, mode="chunk", eot_id=EOT)
    assert rows.shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq_len=4, mode="pad"), "accepted: chunk, concat"),
        (dict(seq_len=0, mode="chunk"), "seq_len=0 is invalid"),
        (dict(seq_len=2.5, mode="concat"), "positive integer"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        pack(_docs(4), eot_id=EOT, **kwargs)


def test_documents_must_be_one_dimensional():
    with pytest.raises(ConfigError, match="1-D"):
        pack([np.zeros((2, 3))], seq_len=2, mode="chunk", eot_id=EOT)
