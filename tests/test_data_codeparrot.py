"""codeparrot_ds from a tiny manual folder in every published format, the released selection, bad folders."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from conftest import assert_one_line, run_script

from aero_jax.data import ByteTokenizer, load_split, pipeline, shards
from aero_jax.data.codeparrot import released_selection
from aero_jax.data.pipeline import open_split

TRAIN = [f"def f{i}(x):\n    return x + {i}\n" * (1 + i % 3) for i in range(12)]
VALID = [f"class C{i}:\n    pass\n" for i in range(5)]


def _write(folder, texts, fmt):
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("the hub's dataset card")
    records = [{"content": t, "repo_name": "r", "path": f"p{i}.py"} for i, t in enumerate(texts)]
    half = len(records) // 2
    for n, part in enumerate((records[:half], records[half:])):
        name = folder / f"data-{n:05d}{fmt}"
        if fmt == ".parquet":
            pq.write_table(pa.Table.from_pylist(part), name)
        else:
            lines = "".join(json.dumps(r) + "\n" for r in part)
            (gzip.open(name, "wt") if fmt.endswith(".gz") else open(name, "w")).write(lines)


def manual_folder(root, fmt):
    _write(root / "codeparrot-ds-train", TRAIN, fmt)
    _write(root / "codeparrot-ds-valid", VALID, fmt)
    return root


@pytest.mark.parametrize("fmt", [".parquet", ".jsonl", ".jsonl.gz"])
def test_every_format_builds_the_same_full_dataset(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 200)  # a few documents per shard: the splits are sharded
    manual = manual_folder(tmp_path / "manual", fmt)
    common = dict(data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    train_source = open_split("codeparrot_ds/full", "train", **common)
    train = {int(r["index"]): r["text"].decode() for r in train_source}
    assert train == dict(enumerate(TRAIN)) and len(open_split("codeparrot_ds/full", "validation", **common)) == 5
    builder = tfds.builder("codeparrot_ds/full", data_dir=str(tmp_path / "data"))
    assert len(builder.info.splits) > 2 and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert "train_000" in builder.info.splits and "train" not in builder.info.splits


def test_the_released_selection_is_the_seed_0_shuffle_prefix():
    selected = released_selection(10, 4)
    assert sorted(np.flatnonzero(selected)) == sorted(np.random.default_rng(0).permutation(10)[:4])
    assert released_selection(10, 20) is None and released_selection(10, None) is None


def test_codeparrot_rows_are_packed_through_the_cache(tmp_path):
    manual = manual_folder(tmp_path / "manual", ".jsonl")
    rows = load_split(dataset="codeparrot_ds/released", split="validation", tokenizer=ByteTokenizer(), seq_len=8,
                      packing="concat", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                      manual_dir=str(manual))
    assert rows.dtype == np.uint16 and rows.shape[1] == 8
    assert rows.size == (sum(len(t) + 1 for t in VALID) // 8) * 8  # every validation document: 5 < 2,000


def test_a_dataset_built_in_this_process_is_tokenized_once(tmp_path, monkeypatch):
    tokenized, original = [], pipeline.documents
    monkeypatch.setattr(pipeline, "documents", lambda *a, **k: tokenized.append(1) or original(*a, **k))
    common = dict(dataset="codeparrot_ds/released", split="validation", tokenizer=ByteTokenizer(), seq_len=8,
                  packing="concat", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                  manual_dir=str(manual_folder(tmp_path / "manual", ".jsonl")))
    built = load_split(**common)  # builds the dataset, then tokenizes it
    read = load_split(**common)  # the dataset as a later process opens it
    assert tokenized == [1] and read.filename == built.filename
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def prepare(tmp_path, manual, packing="concat"):
    """aero-prepare-data of the full dataset from `manual` into tmp_path's data and c folders."""
    return run_script("aero-prepare-data", "--config=configs/default.py:smoke", f"--config.data.packing={packing}",
                      "--config.data.dataset=codeparrot_ds/full", f"--config.data.manual_dir={manual}",
                      f"--config.data.data_dir={tmp_path / 'data'}", f"--config.data.cache_dir={tmp_path / 'c'}")


def test_bad_manual_folders_are_refused_in_one_line(tmp_path):
    def refused(manual, *expected):
        assert_one_line(prepare(tmp_path, manual), "aero-prepare-data", 2, *expected)

    refused(tmp_path / "nowhere", "manual folder", "nowhere/codeparrot-ds-train does not exist", ".parquet")
    empty = tmp_path / "empty"
    (empty / "codeparrot-ds-train").mkdir(parents=True)
    refused(empty, "codeparrot-ds-train is empty", "*.parquet, *.jsonl, *.jsonl.gz")
    foreign = tmp_path / "foreign"
    (foreign / "codeparrot-ds-train").mkdir(parents=True)
    (foreign / "codeparrot-ds-train" / "data.csv").write_text("content\nx\n")
    refused(foreign, "holds only data.csv", "*.parquet")


DAMAGED = {  # id: (format, the damaged second validation file from the good one, what the one line says)
    "cut-short parquet": (".parquet", lambda good: good[:len(good) // 2],
                          ["data-00001.parquet is damaged (ArrowInvalid: ", "download it again"]),
    "cut-short gzip": (".jsonl.gz", lambda good: good[:len(good) // 2],
                       ["data-00001.jsonl.gz is damaged after 0 lines (EOFError: ", "download it again"]),
    "not UTF-8": (".jsonl", lambda good: b'{"content": "x"}\n{"content": "\xff"}\n',
                  ["data-00001.jsonl line 2 is not UTF-8 (byte 0xff at byte 14 of the line)", "accepted: JSON lines in UTF-8"]),
    "null content": (".jsonl", lambda good: b'{"content": "x"}\n{"content": null}\n',
                     ["data-00001.jsonl line 2 has 'content': null", "accepted: records with a string 'content'"]),
    "number content": (".jsonl", lambda good: b'{"content": 12345}\n',
                       ["data-00001.jsonl line 1 has 'content': 12345", "accepted: records with a string 'content'"]),
    "no content": (".jsonl", lambda good: b'{"text": "x"}\n',
                   ["data-00001.jsonl line 1 has no 'content' field (found: text)"]),
}


@pytest.mark.parametrize("fmt, damage, expected", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_file_is_refused_in_one_line_by_name(tmp_path, fmt, damage, expected):
    manual = manual_folder(tmp_path / "manual", fmt)
    path = manual / "codeparrot-ds-valid" / f"data-00001{fmt}"
    path.write_bytes(damage(path.read_bytes()))
    assert_one_line(prepare(tmp_path, manual), "aero-prepare-data", 2, *expected)
    assert not list((tmp_path / "c").glob("*.json"))  # no cache entry is trusted
    assert not tfds.builder("codeparrot_ds/full", data_dir=str(tmp_path / "data")).is_prepared()


def test_prepare_data_prints_only_its_json_lines(tmp_path):
    result = prepare(tmp_path, manual_folder(tmp_path / "manual", ".jsonl"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["split"] for line in result.stdout.splitlines()] == ["train", "validation"], result.stdout


def test_a_failure_after_tokenizing_leaves_no_progress_bar(tmp_path):
    result = prepare(tmp_path, manual_folder(tmp_path / "manual", ".jsonl"), packing="chunk")
    assert_one_line(result, "aero-prepare-data", 2, "split 'validation' of codeparrot_ds/full yields no sequences")
