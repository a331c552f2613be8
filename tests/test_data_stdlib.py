"""The python_stdlib builder: built from a small folder here, so it is fast and fully known."""

import hashlib
import os
import platform

import pytest
import tensorflow_datasets as tfds

from aero_jax.config import ConfigError
from aero_jax.data import prepare_stdlib
from aero_jax.data.stdlib import list_python_files, split_of, stdlib_folder


def _paths_in(split, count, pattern):
    """The first `count` paths of the form pattern.format(i) that the hash sends to `split`."""
    return [p for p in (pattern.format(i) for i in range(5000)) if split_of(p) == split][:count]


TRAIN = _paths_in("train", 5, "mod{}.py")
VALIDATION = _paths_in("validation", 1, "mod{}.py") + _paths_in("validation", 1, "pkg/sub{}.py")
BAD_UTF8 = VALIDATION[1]


def write_source(folder):
    """A stdlib-like folder: .py files in both splits, one with invalid UTF-8, and files to skip."""
    for path in TRAIN + VALIDATION:
        os.makedirs(os.path.dirname(folder / path), exist_ok=True)
        (folder / path).write_text(f"# {path}\nx = {len(path)}\n")
    (folder / BAD_UTF8).write_bytes(b'name = "caf\xe9"\n')
    for skipped in ("site-packages/pkg/mod.py", "pkg/dist-packages/mod.py", "notes.txt"):
        os.makedirs(os.path.dirname(folder / skipped), exist_ok=True)
        (folder / skipped).write_text("skipped = True\n")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(source folder, data_dir, builder) of one small prepared dataset shared by this module."""
    source = tmp_path_factory.mktemp("source")
    write_source(source)
    data_dir = tmp_path_factory.mktemp("data")
    return source, data_dir, prepare_stdlib(str(data_dir), source_dir=str(source))


def test_the_split_is_the_documented_hash_rule():
    for path in TRAIN + VALIDATION:
        digest = int(hashlib.sha256(path.encode()).hexdigest(), 16)
        assert (split_of(path) == "validation") == (digest % 1000 < 20)


def test_files_are_listed_sorted_without_package_trees(prepared):
    source, _, _ = prepared
    assert list_python_files(str(source)) == sorted(TRAIN + VALIDATION)


def test_examples_load_through_the_ordinary_tfds_api(prepared):
    _, data_dir, _ = prepared
    sources = tfds.data_source("python_stdlib", data_dir=str(data_dir))
    assert sorted(sources) == ["train", "validation"]
    validation = [sources["validation"][i] for i in range(len(sources["validation"]))]
    assert [e["path"] for e in validation] == [p.encode() for p in sorted(VALIDATION)]
    texts = {e["path"].decode(): e["text"] for e in validation}
    assert texts[BAD_UTF8] == 'name = "caf\ufffd"\n'.encode()  # replaced, not fatal
    assert [sources["train"][i]["path"].decode() for i in range(len(TRAIN))] == sorted(TRAIN)


def test_metadata_records_the_interpreter_and_file_counts(prepared):
    source, _, builder = prepared
    metadata = dict(builder.info.metadata.items())
    assert metadata == {
        "source": str(source),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "num_files": 7,
        "num_files_train": 5,
        "num_files_validation": 2,
    }
    assert str(builder.info.version) == "1.0.0" and builder.info.file_format.value == "array_record"


def test_preparing_again_reuses_the_data(prepared):
    source, data_dir, _ = prepared
    before = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(data_dir) for p in fs}
    builder = prepare_stdlib(str(data_dir), source_dir=str(source))
    after = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(data_dir) for p in fs}
    assert after == before and builder.info.splits["train"].num_examples == 5


def test_data_from_another_source_is_refused_not_overwritten(prepared, tmp_path):
    _, data_dir, _ = prepared
    with pytest.raises(ConfigError, match="already holds python_stdlib built from the folder"):
        prepare_stdlib(str(data_dir))
    with pytest.raises(ConfigError, match="use another data_dir"):
        prepare_stdlib(str(data_dir), source_dir=str(tmp_path))
    assert tfds.builder("python_stdlib", data_dir=str(data_dir)).info.splits["train"].num_examples == 5


def test_a_folder_that_leaves_a_split_empty_is_refused(tmp_path):
    (tmp_path / TRAIN[0]).write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no .py files to split"):
        prepare_stdlib(str(tmp_path / "data"), source_dir=str(tmp_path))


def test_the_real_stdlib_is_listed_without_installed_packages():
    paths = list_python_files(stdlib_folder())
    assert "os.py" in paths and paths == sorted(paths)
    assert not any(part in ("site-packages", "dist-packages") for p in paths for part in p.split("/"))
