"""Tokenizers: byte round trips, a tiny trained BPE file, the config errors, `aero-tokenizer train`, and
aero_jax's imports free of cycles (tokenizer training sits above both tokenizers and the pipeline)."""

import ast
import importlib.util
import pathlib

import numpy as np
import pytest
import tokenizers
from conftest import assert_one_line, run_script
from tokenizers import decoders, models, pre_tokenizers, trainers

import aero_jax
from aero_jax.config import ConfigError
from aero_jax.data import BPETokenizer, ByteTokenizer, check_vocab, make_tokenizer

CORPUS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "x = [i * i for i in range(10)]\n"]


@pytest.fixture
def bpe_path(tmp_path):
    """A tiny BPE tokenizer.json trained on a few strings, with <|endoftext|> as a special token."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_byte_tokenizer_encodes_utf8_bytes_and_round_trips():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("aé€")
    assert ids.dtype == np.int32
    assert ids.tolist() == list("aé€".encode("utf-8"))
    assert tokenizer.decode(ids) == "aé€"
    assert tokenizer.decode([104, 105, 256, 33]) == "hi<|endoftext|>!"
    assert (tokenizer.vocab_size, tokenizer.eot_id, tokenizer.fingerprint) == (257, 256, "byte-v1")


def test_byte_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ConfigError, match="0..256"):
        ByteTokenizer().decode([65, 257])


def test_bpe_tokenizer_loads_a_trained_file(bpe_path):
    tokenizer = make_tokenizer("bpe", str(bpe_path))
    assert isinstance(tokenizer, BPETokenizer)
    reference = tokenizers.Tokenizer.from_file(str(bpe_path))
    assert tokenizer.vocab_size == reference.get_vocab_size()
    assert tokenizer.eot_id == reference.token_to_id("<|endoftext|>")
    ids = tokenizer.encode(CORPUS[0])
    assert ids.dtype == np.int32 and ids.size < len(CORPUS[0])  # merges were learned
    assert tokenizer.decode(ids) == CORPUS[0]


def test_bpe_fingerprint_follows_the_file_bytes(bpe_path, tmp_path):
    first = BPETokenizer(str(bpe_path)).fingerprint
    assert first == BPETokenizer(str(bpe_path)).fingerprint and len(first) == 64
    changed = tmp_path / "changed.json"
    changed.write_text(bpe_path.read_text().replace("<|endoftext|>", "<|endoftext|>", 1) + "\n")
    assert BPETokenizer(str(changed)).fingerprint != first


def test_bpe_without_end_of_text_token_is_refused(tmp_path):
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=100))
    path = tmp_path / "no_eot.json"
    tokenizer.save(str(path))
    with pytest.raises(ConfigError, match=r"no <\|endoftext\|> token"):
        BPETokenizer(str(path))


@pytest.mark.parametrize(
    "kind, path, message",
    [
        ("wordpiece", None, "accepted: byte, bpe"),
        ("bpe", None, "needs path"),
        ("bpe", "/nonexistent/tokenizer.json", "does not exist"),
        ("byte", "/some/tokenizer.json", "only used with kind='bpe'"),
    ],
)
def test_make_tokenizer_errors(kind, path, message):
    with pytest.raises(ConfigError, match=message):
        make_tokenizer(kind, path)


def test_unparsable_tokenizer_file_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid tokenizers JSON file"):
        make_tokenizer("bpe", str(path))


def test_check_vocab_names_the_fix():
    check_vocab(ByteTokenizer(), 257)
    with pytest.raises(ConfigError) as error:
        check_vocab(ByteTokenizer(), 50257)
    assert str(error.value) == (
        "model vocab_size=50257 does not match the byte tokenizer's 257; set model.vocab_size=257"
    )


def source_flags(corpus):
    """The shared corpus as aero-tokenizer flags."""
    return [f"--source-dir={corpus['source_dir']}", f"--data-dir={corpus['data_dir']}"]


def test_tokenizer_train_reports_a_vocabulary_smaller_than_asked_in_its_one_line(corpus, tmp_path):
    out = tmp_path / "tokenizer.json"
    trained = run_script("aero-tokenizer", "train", "--vocab-size", "100000", "--out", out, *source_flags(corpus))
    assert trained.returncode == 0, trained.stderr[-2000:]
    reached = BPETokenizer(str(out)).vocab_size
    assert reached < 100000
    assert trained.stdout.splitlines() == [
        f"wrote {out}: byte-level BPE, {reached} tokens (not the 100000 asked: the data has no more pairs to merge), "
        f"end-of-text id 0"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--vocab-size", "abc", "--out", "x.json"], ["--vocab-size: invalid int value: 'abc'"]),
        (["--vocab-size", "300"], ["required: --out"]),
        (["--vocab-size", "300", "--out", ".", "--overwrite"], ["--out . names a directory", "accepted: a file path"]),
        (["--vocab-size", "300", "--out", "new/"], ["--out new/ names a directory", "e.g. new/tokenizer.json"]),
    ],
)
def test_tokenizer_train_bad_arguments_end_in_one_line(corpus, tmp_path, flags, expected):
    result = run_script("aero-tokenizer", "train", *flags, *source_flags(corpus), cwd=tmp_path)
    assert_one_line(result, "aero-tokenizer", 2, *expected)
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left


def module_paths(package: pathlib.Path) -> dict:
    """{dotted name: file} of every module under `package` (a package by its __init__.py)."""
    paths = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return paths


def imported_modules(name: str, path: pathlib.Path, modules) -> set:
    """The `modules` that `name` imports, at top level or inside functions; the parent packages every import
    runs first are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return (found & set(modules)) - {name}


def import_cycle(graph: dict):
    """One cycle of `graph` ({module: modules it imports}) as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        cycle = next(filter(None, map(visit, sorted(graph[module]))), None)
        path.pop()
        done.add(module)
        return cycle

    return next(filter(None, map(visit, sorted(graph))), None)


def test_aero_jax_imports_have_no_cycle():
    modules = module_paths(pathlib.Path(aero_jax.__file__).parent)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["aero_jax.data.tokenizer_training"] >= {"aero_jax.data.pipeline", "aero_jax.data.tokenizers"}
    assert import_cycle(graph) is None, " -> ".join(import_cycle(graph))
