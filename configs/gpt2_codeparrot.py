"""GPT-2 small on CodeParrot, the papers' main setting (method file, sections 10-12).

    aero-train --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn --workdir=gs://BUCKET/runs/x
    aero-train --config=configs/gpt2_codeparrot.py:sm_ln_g,t=256 --workdir=...

The variant is a preset's slug (`python -c "from aero_jax import presets; print([presets.slug(n) for n in
presets.names()])"`), optionally followed by `,t=256`. Data: a TFDS dataset named `codeparrot` with a
`text` feature in data.data_dir (prepare it once with your own TFDS builder over the CodeParrot files),
and the GPT-2 BPE `tokenizer.json` at data.tokenizer_path. Published eval perplexity at T=128:
SM+LN+G 2.69, SM+ScFuFFN 3.48, EReg(SM(t)+ScFuFFN) 3.21.
"""

from aero_jax import presets
from aero_jax.run_config import base_config, model_section

TRAIN_TOKENS = 2_100_000_000  # one epoch of CodeParrot at T=128, as in the papers
BATCH = 128


def get_config(variant: str = "ereg_sm_t_scfuffn"):
    name, _, context = variant.partition(",")
    seq_len = int(context.removeprefix("t=")) if context else 128
    if seq_len not in (128, 256):
        raise ValueError(f"context {context!r} is invalid; accepted: t=128, t=256")
    c = base_config()
    c.model = model_section(presets.resolve(name), size="gpt2-small", max_len=seq_len, vocab_size=50257,
                            ereg_weight=1e-5, dtype="bfloat16")
    # The TFDS data lives in a bucket; the tokenized cache stays on each host's local disk.
    c.data.update(dataset="codeparrot", data_dir="gs://YOUR_BUCKET/tensorflow_datasets", tokenizer="bpe",
                  tokenizer_path="gpt2/tokenizer.json", packing="chunk")
    c.train.update(num_steps=TRAIN_TOKENS // (BATCH * seq_len), batch_size=BATCH, log_every=100,
                   eval_every=2000, eval_batch_size=BATCH, eval_batches=100, checkpoint_every=2000)
    return c
