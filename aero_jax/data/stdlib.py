"""python_stdlib: the embedded default dataset, the .py files of this interpreter's standard library.

It needs no download and no network: every machine with Python has it. It is stored as
ArrayRecord, so it is read through `tfds.data_source` without TensorFlow. Importing this module
registers the builder, after which `tfds.data_source("python_stdlib", data_dir=...)` works.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sysconfig
from typing import Dict, Iterator, List, Optional, Tuple

import tensorflow_datasets as tfds

from aero_jax.config import ConfigError
from aero_jax.data.cache import exclusive_lock
from aero_jax.data.shards import prepare_quietly
from aero_jax.run_log import console

EXCLUDED_FOLDERS = ("site-packages", "dist-packages")  # installed packages, not the stdlib
VALIDATION_PER_MILLE = 20  # about 2% of the files
STDLIB_SOURCE = "stdlib"
INCOMPLETE_PREFIX = "incomplete."  # TFDS builds into <dataset>/incomplete.XXXXXX_<version>/, then renames


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
    """The standard library's .py files (text and relative path), split stably by path hash."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: text and path of each .py file."}

    def __init__(self, *, source_dir: Optional[str] = None, **kwargs):
        """`source_dir` replaces the interpreter's stdlib folder (used by tests)."""
        self._source = STDLIB_SOURCE if source_dir is None else os.path.abspath(source_dir)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The .py files of the Python standard library that built it (text and relative path).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
            homepage="https://docs.python.org/3/library/",
            disable_shuffling=True,  # examples stay in sorted path order
            metadata=tfds.core.MetadataDict(source_description(self._source)),
        )

    def _split_generators(self, dl_manager) -> Dict[str, Iterator[Tuple[str, dict]]]:
        root = self.source_folder
        if not os.path.isdir(root):
            raise ConfigError(f"source_dir={root!r} is not a folder; accepted: a folder of .py files")
        paths_by_split = {"train": [], "validation": []}
        for relative_path in list_python_files(root):
            paths_by_split[split_of(relative_path)].append(relative_path)
        empty = [s for s, p in paths_by_split.items() if not p]
        if empty:
            raise ConfigError(
                f"source folder {root!r} gives no .py files to split(s) {', '.join(empty)}; accepted: a folder "
                f"whose relative paths land in both splits (validation takes paths with sha256 % 1000 < "
                f"{VALIDATION_PER_MILLE})"
            )
        self.info.metadata.update({f"num_files_{s}": len(p) for s, p in paths_by_split.items()})
        self.info.metadata["num_files"] = sum(len(p) for p in paths_by_split.values())
        return {s: self._generate_examples(root, p) for s, p in paths_by_split.items()}

    def _generate_examples(self, root: str, relative_paths: List[str]) -> Iterator[Tuple[str, dict]]:
        for relative_path in relative_paths:
            yield relative_path, {"text": read_text(os.path.join(root, relative_path)), "path": relative_path}

    @property
    def source(self) -> str:
        """"stdlib" for this interpreter's standard library, else the absolute source folder."""
        return self._source

    @property
    def source_folder(self) -> str:
        """The folder the examples are read from."""
        return stdlib_folder() if self._source == STDLIB_SOURCE else self._source


def prepare_stdlib(data_dir: str, *, source_dir: Optional[str] = None) -> PythonStdlib:
    """The python_stdlib builder with its data prepared under `data_dir` (reused when present).

    Data already prepared from another source (another Python version, or another source_dir)
    is refused rather than silently reused or overwritten.
    """
    builder = PythonStdlib(data_dir=data_dir, source_dir=source_dir)
    if builder.is_prepared():  # readers stop here: nothing is written to a prepared data_dir
        _check_same_source(builder, data_dir)
        return builder
    os.makedirs(data_dir, exist_ok=True)
    with exclusive_lock(os.path.join(data_dir, f"{builder.name}.lock")):  # one builder at a time
        remove_incomplete_builds(os.path.join(data_dir, builder.name))
        builder = PythonStdlib(data_dir=data_dir, source_dir=source_dir)  # another process may have built it
        if builder.is_prepared():
            _check_same_source(builder, data_dir)
        else:
            prepare_quietly(builder)
    return builder


def remove_incomplete_builds(dataset_folder: str) -> None:
    """Delete the `incomplete.*` folders an interrupted TFDS build left (safe under the build lock)."""
    if not os.path.isdir(dataset_folder):
        return
    for entry in sorted(os.listdir(dataset_folder)):
        if entry.startswith(INCOMPLETE_PREFIX):
            shutil.rmtree(os.path.join(dataset_folder, entry), ignore_errors=True)
            console(f"removed {os.path.join(dataset_folder, entry)}, left by an interrupted dataset build")


def stdlib_folder() -> str:
    """This interpreter's standard library folder."""
    return sysconfig.get_paths()["stdlib"]


def source_description(source: str) -> dict:
    """What the examples are built from: the source and the interpreter that ran the build."""
    return {
        "source": source,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def list_python_files(root: str) -> List[str]:
    """Sorted '/'-separated paths, relative to `root`, of its .py files outside package trees."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_FOLDERS]
        relative_folder = os.path.relpath(folder, root)
        for name in files:
            if name.endswith(".py"):
                found.append(os.path.normpath(os.path.join(relative_folder, name)).replace(os.sep, "/"))
    return sorted(found)


def split_of(relative_path: str) -> str:
    """'validation' for about 2% of paths, 'train' otherwise; stable across machines and runs."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest, "big") % 1000 < VALIDATION_PER_MILLE else "train"


def read_text(path: str) -> str:
    """A file's text; bytes that are not UTF-8 become U+FFFD instead of failing the build."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _source_label(metadata) -> str:
    """The source as a reader would name it; two builds hold the same data when labels agree."""
    if metadata["source"] == STDLIB_SOURCE:
        return f"the standard library of {metadata['python_implementation']} {metadata['python_version']}"
    return f"the folder {metadata['source']}"


def _check_same_source(builder: PythonStdlib, data_dir: str) -> None:
    """Refuse prepared data whose source differs from the one this builder would read."""
    recorded = _source_label(builder.info.metadata)
    requested = _source_label(source_description(builder.source))
    if recorded != requested:
        raise ConfigError(
            f"data_dir={data_dir!r} already holds python_stdlib built from {recorded}, not from {requested}; "
            f"use another data_dir (prepared data is never overwritten)"
        )
