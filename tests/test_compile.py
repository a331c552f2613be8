"""aero-compile without libtpu: topologies are read and refused in one line before anything compiles.

The compiling tests need libtpu and live in tests/tpu (`make test-tpu`).
"""

import importlib.util

import pytest

from aero_jax import aot
from aero_jax.config import ConfigError
from conftest import assert_one_line, run_script


@pytest.mark.parametrize("text, name, chips", [("v5e:2x4", "v5e:2x4", 8), ("V5E-8", "v5e:2x4", 8),
                                               ("v4-8", "v4:2x2x1", 4), ("v5p:2x2x2", "v5p:2x2x2", 8),
                                               ("v6e-256", "v6e:16x16", 256)])
def test_topologies_by_shape_or_slice_name(text, name, chips):
    topology = aot.parse_topology(text)
    assert (topology.name, topology.chips) == (name, chips)
    assert topology.chip.hbm_bytes == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}[topology.chip.name] * aot.GiB


@pytest.mark.parametrize("text", ["v7:2x2", "v5e", "v5e:2x2x1", "v4:2x2", "v5e:0x4", "v5e:2xa", "v5e-7", ""])
def test_unknown_topology_lists_the_accepted(text):
    with pytest.raises(ConfigError, match="accepted: CHIP:AxB for v5e, v6e, CHIP:AxBxC for v4, v5p .* v5e-8"):
        aot.parse_topology(text)


def test_unknown_topology_through_the_console_script():
    result = run_script("aero-compile", "--config=configs/default.py", "--topology=v9:2x2")
    assert_one_line(result, "aero-compile", 2, "--topology='v9:2x2' is invalid; accepted:", "v5e:2x4", "v4-8")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_without_libtpu_one_line_names_the_extra():
    result = run_script("aero-compile", "--config=configs/default.py", "--topology=v5e:2x2")
    assert_one_line(result, "aero-compile", 2, "needs libtpu", "pip install -e '.[tpu]'")


def test_unknown_step_is_refused_in_one_line():
    result = run_script("aero-compile", "--config=configs/default.py", "--topology=v5e:2x2", "--steps=train,decode")
    assert_one_line(result, "aero-compile", 2, "--steps=train,decode is invalid; accepted: a comma-separated subset "
                                               "of train, eval")
