"""GPT-2 small on Languini books at T=512 (method file, section 10).

    aero-train --config=configs/gpt2_languini.py:ereg_sm_t_scfuffn --workdir=gs://BUCKET/runs/x
    aero-train --config=configs/gpt2_languini.py:sm_ln_g,tokens=2.4B --workdir=...

The variant is a preset's slug, optionally followed by `,tokens=1.2B|2.4B|4.8B` (default 1.2B).
Data: `languini_books` (aero_jax/data/languini.py), built once from the books Languini's own script
tokenized (its data/books folder, data.manual_dir, cloned to ~/aero_data/languini), with its
16,384-piece SentencePiece model as the tokenizer (for decoding samples; the ids are used as stored).
Books are joined with Languini's end-of-document id 2 and cut into 512-token rows (packing concat),
as Languini's streams do. Prepare once: `aero-prepare-data --config=configs/gpt2_languini.py`. The
papers train on 1.2B, 2.4B or 4.8B tokens with lambda = 5e-5 and SM(t) initialised at t = 0.1.

The papers do not publish their Languini optimizer. Their token budgets are exactly Languini's
GPT-small compute classes (6h, 12h, 24h of one RTX 3090 at 55,416 tokens/s), so the recipe is
Languini's own (languini-kitchen, languini/projects/gpt/README.md and main.py): Adam with betas
(0.9, 0.95), eps 1e-8, no weight decay, no gradient clipping, 200 warmup steps, cosine from 6e-4
down to 6e-6; global batch 128 with accumulation 4 for 1.2B and 2.4B tokens, 256 with accumulation
8 for 4.8B. Languini's own model (untied head, scaled embedding, tanh GELU, all biases) is not
copied: the architecture is the AERO preset's.
"""

from aero_jax import presets
from aero_jax.run_config import base_config, model_section

SEQ_LEN = 512
DATA = "~/aero_data"
LANGUINI = f"{DATA}/languini"  # a clone of languini-kitchen that has run its tokenization script
WARMUP_STEPS = 200
PEAK_LR, END_LR = 6e-4, 6e-6
# tokens -> (global batch, accumulation, steps), Languini README lines 25, 39, 53.
BUDGETS = {"1.2B": (128, 4, 18265), "2.4B": (128, 4, 36529), "4.8B": (256, 8, 36529)}


def get_config(variant: str = "ereg_sm_t_scfuffn"):
    name, _, tokens = variant.partition(",")
    budget = tokens.removeprefix("tokens=") if tokens else "1.2B"
    if budget not in BUDGETS:
        raise ValueError(f"token budget {tokens!r} is invalid; accepted: {', '.join(f'tokens={b}' for b in BUDGETS)}")
    batch, accumulation, steps = BUDGETS[budget]
    preset = presets.resolve(name)
    overrides = {"temperature_init": 0.1} if presets.model_config(preset).learnable_temperature else {}
    c = base_config()
    c.model = model_section(preset, size="gpt2-small", max_len=SEQ_LEN, vocab_size=16384, ereg_weight=5e-5,
                            ereg_rows=batch // accumulation, dtype="bfloat16", **overrides)
    # Built and packed once (aero-prepare-data); the packed rows are memory-mapped from each host's disk.
    c.data.update(dataset="languini_books", manual_dir=f"{LANGUINI}/data/books", data_dir=f"{DATA}/tensorflow_datasets",
                  tokenizer="sentencepiece", tokenizer_path=f"{LANGUINI}/languini/vocabs/spm_models/books_16384.model",
                  packing="concat")
    c.optim.update(peak_lr=PEAK_LR, weight_decay=0.0, warmup_fraction=WARMUP_STEPS / steps, decay="cosine",
                   end_lr_fraction=END_LR / PEAK_LR, clip_norm=0.0, b1=0.9, b2=0.95, eps=1e-8)
    c.train.update(num_steps=steps, batch_size=batch, grad_accum_steps=accumulation, log_every=100,
                   eval_every=500, eval_batch_size=16, eval_batches=500, checkpoint_every=2000)
    return c
