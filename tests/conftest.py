"""Strict JAX for every test (implicit rank promotion is an error), and a small shared corpus."""

import pathlib
import shutil
import sysconfig

import jax
import pytest

from aero_jax import data

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A few standard-library modules, at least three of them in the validation split."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.name for p in stdlib.glob("*.py"))
    val = [f for f in files if data.stdlib.split_of(f) == "validation"][:3]
    train = [f for f in files if data.stdlib.split_of(f) == "train"][:25]
    source = tmp_path_factory.mktemp("source")
    for name in val + train:
        shutil.copy(stdlib / name, source / name)
    return {"source_dir": str(source), "data_dir": str(tmp_path_factory.mktemp("tfds")),
            "cache_dir": str(tmp_path_factory.mktemp("cache"))}
