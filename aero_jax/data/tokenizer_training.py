"""`aero-tokenizer train`: a GPT-2-style byte-level BPE trained on a dataset split, streaming its documents
(for a user who cannot download the papers' tokenizer from the hub).

    aero-tokenizer train --dataset python_stdlib --vocab-size 4096 --out tokenizer.json
"""

from __future__ import annotations

import argparse
import os

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from aero_jax.config import ConfigError
from aero_jax.data import pipeline
from aero_jax.data.cache import write_atomically
from aero_jax.data.tokenizers import EOT_TOKEN
from aero_jax.errors import argparse_main


def train_bpe(text_batches, *, vocab_size: int, num_documents: int) -> tokenizers.Tokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer and decoder) with <|endoftext|>, trained on batches of texts.

    Memory grows with the distinct pre-tokenized words, not with the corpus: batches stream through.
    """
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # its bars print blank lines
    tokenizer.train_from_iterator(text_batches, trainer=trainer, length=num_documents)
    return tokenizer


def _train_command(args) -> None:
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if args.vocab_size < minimum:
        raise ConfigError(f"--vocab-size {args.vocab_size} is invalid; accepted: at least {minimum} (256 bytes and "
                          f"{EOT_TOKEN})")
    if os.path.isdir(args.out) or args.out.endswith(os.sep):
        raise ConfigError(f"--out {args.out} names a directory; accepted: a file path, e.g. "
                          f"{os.path.join(args.out, 'tokenizer.json')}")
    if os.path.exists(args.out) and not args.overwrite:
        raise ConfigError(f"--out {args.out} already exists; accepted: a new path, or --overwrite to replace it")
    source = pipeline.open_split(args.dataset, args.split, data_dir=os.path.expanduser(args.data_dir),
                                 source_dir=os.path.expanduser(args.source_dir) if args.source_dir else None,
                                 manual_dir=args.manual_dir or None)
    tokenizer = train_bpe(pipeline.text_batches(source, desc=f"reading {args.dataset}/{args.split}"),
                          vocab_size=args.vocab_size, num_documents=len(source))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomically(args.out, lambda f: f.write(tokenizer.to_str().encode()))
    reached, asked = tokenizer.get_vocab_size(), args.vocab_size
    short = f" (not the {asked} asked: the data has no more pairs to merge)" if reached < asked else ""
    print(f"wrote {args.out}: byte-level BPE, {reached} tokens{short}, end-of-text id "
          f"{tokenizer.token_to_id(EOT_TOKEN)}")


def main(argv=None):
    # One parser, not subparsers: argparse_main makes its errors one line, while a subparser prints its own usage.
    parser = argparse.ArgumentParser(prog="aero-tokenizer", description="Train a byte-level BPE tokenizer.")
    parser.add_argument("command", choices=["train"], help="train a byte-level BPE on a dataset split")
    parser.add_argument("--dataset", default="python_stdlib", help="python_stdlib or a dataset prepared in --data-dir")
    parser.add_argument("--split", default="train")
    parser.add_argument("--vocab-size", type=int, required=True, help="tokens, <|endoftext|> included")
    parser.add_argument("--out", required=True, help="the tokenizer.json to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--data-dir", default="~/.cache/aero_jax/tensorflow_datasets")
    parser.add_argument("--source-dir", default="", help="python_stdlib only: another folder of .py files")
    parser.add_argument("--manual-dir", default="", help="codeparrot_ds: the downloaded files, built into --data-dir "
                       "the first time")
    argparse_main("aero-tokenizer", parser, _train_command, argv)
