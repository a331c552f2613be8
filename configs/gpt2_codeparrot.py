"""GPT-2 small on CodeParrot, the papers' main setting (method file, sections 10-12).

    aero-train --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn --workdir=gs://BUCKET/runs/x
    aero-train --config=configs/gpt2_codeparrot.py:sm_ln_g,t=256 --workdir=...

The variant is a preset's slug (`python -c "from aero_jax import presets; print([presets.slug(n) for n in
presets.names()])"`), optionally followed by `,t=256` or `,t=512`. Data: the released selection of codeparrot-ds
(`codeparrot_ds/released`, aero_jax/data/codeparrot.py), built once from the downloaded files in
data.manual_dir, and the papers' tokenizer (huggingface-course/code-search-net-tokenizer) as a
`tokenizer.json` at data.tokenizer_path; the model's vocabulary is read from that file when it is there
(the run refuses a mismatch, naming both sizes). Prepare both splits once before the run:

    aero-prepare-data --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn

Published eval perplexity at T=128: SM+LN+G 2.69, SM+ScFuFFN 3.48, EReg(SM(t)+ScFuFFN) 3.21.

The recipe is the released one (Nandan91/relu-revival-normfree, config/train/train.yaml and
run_clm.py): 128 sequences per microbatch, gradient accumulation 4, so 512 sequences per update
and about 32K updates for the 2.1B-token epoch; AdamW at 1e-3 (betas 0.9, 0.999, eps 1e-8),
weight decay 0.1, 5% warmup, then Hugging Face's `polynomial` schedule (power 1, down to 1e-7),
gradient clipping at 1.0; the penalty's lambda multiplies a sum over 128 rows (model.ereg_rows).
"""

import os

from aero_jax import presets
from aero_jax.run_config import base_config, model_section

TRAIN_TOKENS = 2_100_000_000  # one epoch of CodeParrot at T=128, as in the papers
MICROBATCH = 128  # train.yaml: device_train_batch_size
ACCUMULATION = 4  # train.yaml: gradient_accumulation_steps
BATCH = MICROBATCH * ACCUMULATION
PEAK_LR = 1e-3
END_LR = 1e-7  # transformers' polynomial schedule: lr_end default
DATA = "~/aero_data"  # where the runbook's download commands put the files
TOKENIZER = os.path.join(DATA, "code-search-net-tokenizer", "tokenizer.json")
GPT2_VOCAB = 50257  # used only until the tokenizer file is there; then its own size


def tokenizer_vocab_size(path: str) -> int:
    """The vocabulary of a tokenizer.json, or GPT-2's when the file is not there yet."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return GPT2_VOCAB
    import tokenizers

    return tokenizers.Tokenizer.from_file(path).get_vocab_size(with_added_tokens=True)


def get_config(variant: str = "ereg_sm_t_scfuffn"):
    name, _, context = variant.partition(",")
    seq_len = int(context.removeprefix("t=")) if context else 128
    if seq_len not in (128, 256, 512):
        raise ValueError(f"context {context!r} is invalid; accepted: t=128, t=256, t=512")
    c = base_config()
    c.model = model_section(presets.resolve(name), size="gpt2-small", max_len=seq_len,
                            vocab_size=tokenizer_vocab_size(TOKENIZER), ereg_weight=1e-5, ereg_rows=MICROBATCH,
                            dtype="bfloat16")
    # Built and tokenized once (aero-prepare-data); the packed rows are memory-mapped from each host's disk.
    c.data.update(dataset="codeparrot_ds/released", manual_dir=os.path.join(DATA, "codeparrot"),
                  data_dir=os.path.join(DATA, "tensorflow_datasets"), tokenizer="bpe", tokenizer_path=TOKENIZER,
                  packing="chunk")
    c.optim.update(peak_lr=PEAK_LR, weight_decay=0.1, warmup_fraction=0.05, decay="linear",
                   end_lr_fraction=END_LR / PEAK_LR, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)
    c.train.update(num_steps=TRAIN_TOKENS // (BATCH * seq_len), batch_size=BATCH, grad_accum_steps=ACCUMULATION,
                   log_every=100, eval_every=500, eval_batch_size=MICROBATCH, eval_batches=0,
                   checkpoint_every=2000)
    return c
