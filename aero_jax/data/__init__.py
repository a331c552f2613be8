"""Data: the embedded python_stdlib dataset, tokenizers, packing, the on-disk cache, the sampler.

Importing this package registers the python_stdlib, codeparrot_ds and languini_books TFDS builders.
"""

from aero_jax.data.cache import cached_array
from aero_jax.data.codeparrot import CodeparrotDs
from aero_jax.data.languini import LanguiniBooks
from aero_jax.data.packing import PACKING_MODES, pack
from aero_jax.data.pipeline import load_split, ngram_perplexity
from aero_jax.data.sampler import batch_indices
from aero_jax.data.stdlib import PythonStdlib, prepare_stdlib
from aero_jax.data.tokenizers import (
    TOKENIZER_KINDS,
    BPETokenizer,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_vocab,
    make_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "CodeparrotDs",
    "LanguiniBooks",
    "ByteTokenizer",
    "PACKING_MODES",
    "PythonStdlib",
    "SentencePieceTokenizer",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "batch_indices",
    "cached_array",
    "check_vocab",
    "load_split",
    "make_tokenizer",
    "ngram_perplexity",
    "pack",
    "prepare_stdlib",
]
