"""The README's Python examples run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, str(README), "exec"), namespaces[-1])
    library, generation = namespaces
    assert library["entropies"].shape == (2, 4, 2, 64)
    assert float(library["shares"].sum()) == 1.0
    tokens = generation["tokens"]
    assert tokens.shape == (2, 16) and tokens.dtype == np.int32
    assert len(generation["first"]) <= 16 and 256 not in generation["first"]
