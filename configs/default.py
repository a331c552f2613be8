"""The embedded default: a small EReg(SM(t)+ScFuFFN) model on the Python standard library, bytes.

    aero-train --config=configs/default.py --workdir=workdirs/default

Finishes in about 10 minutes on 2 CPU cores, data preparation included; the validation
perplexity should fall well below the bigram perplexity of the same data (see README).
Variants: `:smoke` (a few steps, for tests); `:bpe`, the same model on a 4,096-token byte-level
BPE trained on the embedded dataset, made once with

    aero-tokenizer train --dataset python_stdlib --vocab-size 4096 --out ~/.cache/aero_jax/stdlib_bpe4096.json
"""

from aero_jax.run_config import base_config, model_section


def get_config(variant: str = ""):
    c = base_config()
    # A softmax-only model with fused, scaled FFNs, learnable temperatures and the entropy
    # regularizer, sized for a CPU; vocabulary 257 = bytes + end-of-text.
    c.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny", num_layers=4, num_heads=4, d_model=128,
                            d_ff=512, vocab_size=257, max_len=128)
    c.train.num_steps = 1500
    c.train.batch_size = 32
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    if variant == "smoke":
        c.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny", vocab_size=257, max_len=32)
        c.train.update(num_steps=8, batch_size=4, log_every=2, eval_every=4, eval_batch_size=4, eval_batches=2,
                       checkpoint_every=4)
    elif variant == "bpe":
        c.model.vocab_size = 4096
        c.data.update(tokenizer="bpe", tokenizer_path="~/.cache/aero_jax/stdlib_bpe4096.json")
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/default.py; accepted: smoke, bpe")
    return c
