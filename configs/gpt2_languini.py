"""GPT-2 small on Languini books at T=512 (method file, section 10).

    aero-train --config=configs/gpt2_languini.py:ereg_sm_t_scfuffn --workdir=gs://BUCKET/runs/x

The variant is a preset's slug. Data: a TFDS dataset named `languini_books` with a `text` feature in
data.data_dir and the Languini 16,384-token BPE `tokenizer.json` at data.tokenizer_path. The papers
train on 1.2B, 2.4B or 4.8B tokens with lambda = 5e-5 and SM(t) initialised at t = 0.1.
"""

from aero_jax import presets
from aero_jax.run_config import base_config, model_section

TRAIN_TOKENS = 1_200_000_000
BATCH = 128
SEQ_LEN = 512


def get_config(variant: str = "ereg_sm_t_scfuffn"):
    name = presets.resolve(variant)
    overrides = {"temperature_init": 0.1} if presets.model_config(name).learnable_temperature else {}
    c = base_config()
    c.model = model_section(name, size="gpt2-small", max_len=SEQ_LEN, vocab_size=16384, ereg_weight=5e-5,
                            dtype="bfloat16", **overrides)
    # The TFDS data lives in a bucket; the tokenized cache stays on each host's local disk.
    c.data.update(dataset="languini_books", data_dir="gs://YOUR_BUCKET/tensorflow_datasets", tokenizer="bpe",
                  tokenizer_path="languini/tokenizer.json", packing="chunk")
    c.train.update(num_steps=TRAIN_TOKENS // (BATCH * SEQ_LEN), batch_size=BATCH, log_every=100,
                   eval_every=2000, eval_batch_size=BATCH, eval_batches=100, checkpoint_every=2000)
    return c
