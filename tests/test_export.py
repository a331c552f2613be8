"""Export to PyTorch and Hugging Face, import from GPT-2: the same numbers on both sides, bad input in one line."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line, dead_writer, run_script, small_config

torch = pytest.importorskip("torch")
from safetensors.numpy import load_file, save_file  # noqa: E402

from aero_jax import presets  # noqa: E402
from aero_jax.export import from_hf, hf, to_pytorch  # noqa: E402
from aero_jax.export.parity import (load_modeling, max_differences, moved_model, parity_inputs,  # noqa: E402
                                    perturbed, torch_model)
from aero_jax.layers import LN_CALIBRATION  # noqa: E402
from aero_jax.model import AeroLM, init_variables, logits_and_entropy, split_variables  # noqa: E402
from aero_jax.run_config import model_section  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # float32, absolute, logits and entropies
SIZE = dict(size="tiny", num_layers=3, vocab_size=257, max_len=32)
MODELING = load_modeling()


def assert_same_numbers(model, variables, exported, seq_len: int):
    for what, tokens in parity_inputs(model.config.vocab_size, seq_len).items():
        logits, entropy = max_differences(model, variables, exported, tokens)
        assert logits <= TOLERANCE and entropy <= TOLERANCE, (what, logits, entropy)


BASE_PRESETS = [n for n in presets.names() if not n.startswith("EReg(")] + ["EReg(SM(t)+ScFuFFN)"]


@pytest.mark.parametrize("name", BASE_PRESETS)
def test_every_preset_gives_the_same_logits_and_entropies_in_pytorch(name):
    model, params, state = moved_model(name, **SIZE)
    assert_same_numbers(model, {"params": params, **state}, torch_model(model.config, params, state),
                        model.config.max_len)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE_PRESETS)
def test_every_preset_after_training_steps_gives_the_same_numbers(name):
    import optax

    from aero_jax.objective import lm_loss

    c = presets.model_config(name, **SIZE)
    model = AeroLM(c)
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, state, opt_state, tokens):
        grads, (_, state) = jax.grad(lambda p: lm_loss(p, state, tokens, model=model), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), state, opt_state

    rng = np.random.default_rng(1)
    for _ in range(4):  # bytes below 128 only: the ids 200 and up are never seen
        params, state, opt_state = step(params, state, opt_state, jnp.asarray(rng.integers(0, 128, (4, c.max_len))))
    assert_same_numbers(model, {"params": params, **state}, torch_model(c, params, state), c.max_len)


def test_the_frozen_layernorm_substitute_exports_as_a_centring_affine_map():
    c = presets.model_config("SM+LN+R", **SIZE).replace(ln_frozen=True)
    model = AeroLM(c)
    variables = init_variables(model, jax.random.key(0))
    params = perturbed(variables["params"], seed=2)
    calibration = jax.tree_util.tree_map(lambda s: s * 0 + 1.7, variables[LN_CALIBRATION])
    state = {LN_CALIBRATION: perturbed(calibration, seed=3)}
    assert_same_numbers(model, {"params": params, **state}, torch_model(c, params, state), c.max_len)


# -- trained runs, through the command -------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """Tiny runs of a few architectures, 8 steps each: {preset: workdir}."""
    from aero_jax.trainer import train

    runs = {}
    for name in ("SM+LN+G", "SM+LN+R", "EReg(SM(t)+ScFuFFN)", "SM+SNorm(QK+FFN)", "SM+LReLU(learnable per layer)"):
        config = small_config(corpus)
        config.model = model_section(name, size="tiny", vocab_size=257, max_len=32)
        workdir = tmp_path_factory.mktemp(presets.slug(name))
        train(config, str(workdir))
        runs[name] = str(workdir)
    return runs


def _restored(workdir):
    from aero_jax.evaluate import restore_run

    run = restore_run(workdir)
    return run.model, {"params": run.state.params, **run.state.model_state}




FRESH_PROCESS = """
import sys

class NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "aero_jax", "transformers"):
            raise ImportError(f"{name} must not be imported when loading an export")

sys.meta_path.insert(0, NoJax())
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from modeling_aero import AeroForCausalLM

model = AeroForCausalLM.from_pretrained(sys.argv[1])
tokens = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    out = model(tokens, return_entropy=True)
np.save(sys.argv[3], out.logits.numpy())
np.save(sys.argv[4], out.entropy.numpy())
"""


@pytest.mark.slow
def test_exported_runs_load_in_a_fresh_process_without_jax(trained, tmp_path):
    for name in ("EReg(SM(t)+ScFuFFN)", "SM+SNorm(QK+FFN)", "SM+LReLU(learnable per layer)"):
        out = tmp_path / presets.slug(name)
        result = run_script("aero-export", "--workdir", trained[name], "--out", out)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["README.md", "byte_tokenizer.json", "config.json", "model.safetensors", "modeling_aero.py"]
            + (["training_extras.safetensors"] if name.startswith("EReg") else []))
        model, variables = _restored(trained[name])
        tokens = parity_inputs(257, 32)["unseen ids"]
        np.save(tmp_path / "tokens.npy", tokens)
        script = tmp_path / "load.py"
        script.write_text(FRESH_PROCESS)
        loaded = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "tokens.npy"),
                                 str(tmp_path / "logits.npy"), str(tmp_path / "entropy.npy")],
                                capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        logits, entropy, _ = logits_and_entropy(model, variables, jnp.asarray(tokens))
        np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(np.load(tmp_path / "entropy.npy"), entropy, atol=TOLERANCE, rtol=0)
        card = (out / "README.md").read_text()
        assert "nonlinear operations" in card and "8 steps" in card
    extras = load_file(str(tmp_path / "ereg_sm_t_scfuffn" / "training_extras.safetensors"))
    assert extras["entropy_thresholds"].shape == (2, 2)


def test_a_bfloat16_export_stays_within_its_tolerance(trained, tmp_path):
    out = tmp_path / "bf16"
    assert run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", out, "--dtype", "bfloat16",
                    "--format", "torch").returncode == 0
    tm = MODELING.AeroForCausalLM.from_pretrained(str(out))
    assert tm.wte.weight.dtype == torch.bfloat16
    model, variables = _restored(trained["SM+LN+G"])
    tokens = parity_inputs(257, 32)["random"]
    logits, _, _ = logits_and_entropy(model, variables, jnp.asarray(tokens))
    with torch.no_grad():
        exported = tm(torch.from_numpy(tokens)).logits.numpy()
    # bfloat16 keeps 8 bits of mantissa: about 0.4% of each weight, compounded over the layers.
    np.testing.assert_allclose(exported, logits, atol=0.05 * float(np.abs(logits).max()), rtol=0)


@pytest.mark.slow
def test_the_hf_layout_loads_into_gpt2_and_decodes_greedily_like_jax(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    for name in ("SM+LN+G", "SM+LN+R"):
        out = tmp_path / presets.slug(name)
        result = run_script("aero-export", "--workdir", trained[name], "--out", out)  # auto: hf
        assert result.returncode == 0 and "as hf" in result.stdout, result.stderr
        gpt2, info = transformers.GPT2LMHeadModel.from_pretrained(str(out), output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        model, variables = _restored(trained[name])
        prompt = np.asarray([[10, 32, 100, 101, 102]])
        tokens = prompt
        for _ in range(12):  # the argmax chain of full JAX forward passes
            logits, _, _ = logits_and_entropy(model, variables, jnp.asarray(tokens))
            tokens = np.concatenate([tokens, np.asarray(logits[:, -1]).argmax(-1)[:, None]], axis=1)
        generated = gpt2.eval().generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False,
                                         pad_token_id=256)
        assert generated.numpy().tolist() == tokens.tolist()


def test_the_torch_layout_loads_through_automodel_with_remote_code(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "auto"
    assert run_script("aero-export", "--workdir", trained["EReg(SM(t)+ScFuFFN)"], "--out", out).returncode == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    jax_model, variables = _restored(trained["EReg(SM(t)+ScFuFFN)"])
    tokens = parity_inputs(257, 32)["full length"]
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(logits, logits_and_entropy(jax_model, variables, jnp.asarray(tokens))[0],
                               atol=TOLERANCE, rtol=0)


def test_both_layouts_name_the_tokenizers_end_of_text_as_eos_and_pad(trained, tmp_path):
    from aero_jax.data import ByteTokenizer

    for layout in ("hf", "torch"):
        to_pytorch(trained["SM+LN+G"], str(tmp_path / layout), layout=layout)
        config = json.loads((tmp_path / layout / "config.json").read_text())
        assert [config.get(f"{k}_token_id") for k in ("bos", "eos", "pad")] == [ByteTokenizer.eot_id] * 3, layout


# -- import from Hugging Face ---------------------------------------------------------------------

def _gpt2_directory(tmp_path, corpus_text: str, vocab_size: int = 300):
    """A random GPT-2 saved by transformers, with a byte-level BPE tokenizer trained on some text."""
    transformers = pytest.importorskip("transformers")
    import tokenizers

    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([corpus_text], trainer=trainer)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2,
                                     n_head=2, n_inner=64)
    torch.manual_seed(0)
    out = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(str(out))
    tokenizer.save(str(out / "tokenizer.json"))
    return out


@pytest.mark.slow
def test_an_imported_gpt2_evaluates_takes_the_substitute_and_fine_tunes(corpus, tmp_path):
    text = "".join(p.read_text() for p in sorted(pathlib.Path(corpus["source_dir"]).glob("*.py"))[:3])
    workdir = tmp_path / "imported"
    assert from_hf(str(_gpt2_directory(tmp_path, text)), str(workdir), data_section=corpus)["architecture"] == \
        "SM+LN+G"
    evaluated = run_script("aero-eval", f"--workdir={workdir}")
    assert evaluated.returncode == 0 and "perplexity" in evaluated.stdout, evaluated.stderr[-2000:]
    substituted = run_script("aero-ln-substitute", "--workdir", workdir, "--calibration-batches", "1")
    assert substituted.returncode == 0, substituted.stderr[-2000:]
    tuned = run_script("aero-train", f"--config={ROOT / 'configs' / 'from_workdir.py'}:{workdir}",
                       f"--workdir={workdir}", "--config.train.num_steps=2", "--config.train.batch_size=4",
                       "--config.train.eval_every=2", "--config.train.eval_batch_size=4",
                       "--config.train.eval_batches=1")
    assert tuned.returncode == 0 and "resumed from the checkpoint at step 0" in tuned.stdout + tuned.stderr, \
        tuned.stderr[-2000:]
    assert json.loads((workdir / "summary.json").read_text())["step"] == 2


@pytest.mark.slow
def test_hf_to_jax_to_hf_gives_the_same_tensors(corpus, tmp_path):
    text = "".join(p.read_text() for p in sorted(pathlib.Path(corpus["source_dir"]).glob("*.py"))[:3])
    source = _gpt2_directory(tmp_path, text)
    result = run_script("aero-import-hf", "--checkpoint", source, "--workdir", tmp_path / "imported")
    assert result.returncode == 0, result.stderr
    assert run_script("aero-export", "--workdir", tmp_path / "imported", "--out", tmp_path / "again").returncode == 0
    original = load_file(str(source / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    original = {k: v for k, v in original.items() if not k.endswith(hf.IGNORED_GPT2_BUFFERS) and k != "lm_head.weight"}
    assert sorted(original) == sorted(again)
    for key in original:
        assert np.array_equal(original[key], again[key]), key
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()


def test_jax_to_hf_to_jax_gives_the_same_parameters(trained, tmp_path):
    from aero_jax.evaluate import restore_run

    assert to_pytorch(trained["SM+LN+R"], str(tmp_path / "hf"), layout="hf")["format"] == "hf"
    from_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    original = restore_run(trained["SM+LN+R"]).state.params
    back = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(
        restore_run(str(tmp_path / "back")).state.params)}
    for path, value in jax.tree_util.tree_leaves_with_path(original):
        assert np.array_equal(value, back.pop(jax.tree_util.keystr(path))), jax.tree_util.keystr(path)
    assert back and all(k.endswith("['bias']") and not np.any(v) for k, v in back.items())  # GPT-2's zero biases


# -- bad input, as the user meets it ----------------------------------------------------------------

def _damaged_copy(workdir, tmp_path, damage):
    """A copy of a run with a checkpoint at step 12 whose state `damage` changed, saved as a trainer saves it."""
    import shutil

    from aero_jax.checkpoint import Checkpointer
    from aero_jax.evaluate import restore_run

    copy = tmp_path / f"damaged_{damage.__name__}"
    shutil.copytree(workdir, copy)
    state = restore_run(str(copy)).state
    checkpointer = Checkpointer(str(copy / "checkpoints"))
    checkpointer.save(12, damage(jax.tree_util.tree_map(np.array, state)),
                      {"data_offset": 0, "recoveries": 0, "lr_scale": 1.0})
    checkpointer.wait()
    return copy


def nan_parameter(state):
    state.params["wpe"][0, 0] = np.nan
    return state


def zero_spectral_vectors(state):
    return state.replace(model_state=jax.tree_util.tree_map(np.zeros_like, state.model_state))


@pytest.mark.slow  # thirteen console-script runs: about 45 s
def test_bad_exports_are_refused_in_one_line_and_write_nothing(trained, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert_one_line(run_script("aero-export", "--workdir", empty, "--out", tmp_path / "o1"), "aero-export", 2,
                    "has no config.json")
    (empty / "config.json").write_bytes((pathlib.Path(trained["SM+LN+G"]) / "config.json").read_bytes())
    assert_one_line(run_script("aero-export", "--workdir", empty, "--out", tmp_path / "o1"), "aero-export", 2,
                    "has no checkpoint")
    assert not (tmp_path / "o1").exists()
    nan_run = _damaged_copy(trained["SM+LN+G"], tmp_path, nan_parameter)
    assert_one_line(run_script("aero-export", "--workdir", nan_run, "--out", tmp_path / "o2", "--step", "12"),
                    "aero-export", 2, "checkpoint 12", "non-finite", "accepted: a readable step: 4, 8")
    fell_back = run_script("aero-export", "--workdir", nan_run, "--out", tmp_path / "o5")  # as every reader does
    assert fell_back.returncode == 0, fell_back.stderr[-2000:]
    assert "checkpoint at step 12 is unreadable" in fell_back.stderr and "read step 8" in fell_back.stderr
    assert json.loads((tmp_path / "o5" / "config.json").read_text())["aero"]["step"] == 8
    zero_sigma = _damaged_copy(trained["SM+SNorm(QK+FFN)"], tmp_path, zero_spectral_vectors)
    assert_one_line(run_script("aero-export", "--workdir", zero_sigma, "--out", tmp_path / "o2"), "aero-export", 2,
                    "checkpoint 12", "folds to non-finite values in h.0.attn.q_proj.weight", "e.g. --step 8")
    assert not (tmp_path / "o2").exists()
    assert_one_line(run_script("aero-export", "--workdir", nan_run, "--out", nan_run.parent, "--overwrite"),
                    "aero-export", 2, "holds the run", "outside the run")
    assert_one_line(run_script("aero-export", "--workdir", trained["EReg(SM(t)+ScFuFFN)"], "--out", tmp_path / "o3",
                               "--format", "hf"), "aero-export", 2, "ln_attn=False", "--format torch")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", tmp_path / "o4",
                               "--format", "onnx"), "aero-export", 2, "--format=onnx", "auto, hf, torch")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", tmp_path / "o4",
                               "--step", "5"), "aero-export", 2, "step 5 has no checkpoint", "accepted: 4, 8")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", tmp_path / "o4",
                               "--step", "five"), "aero-export", 2, "invalid int value: 'five'", "--help")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", tmp_path / "o4",
                               "--dtype", "float16"), "aero-export", 2, "--dtype=float16", "float32, bfloat16")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", existing), "aero-export", 2,
                    "already exists", "--overwrite")
    assert_one_line(run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", existing, "--overwrite"),
                    "aero-export", 2,
                    "is not an export")
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    export = tmp_path / "export"
    assert run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", export).returncode == 0
    assert run_script("aero-export", "--workdir", trained["SM+LN+R"], "--out", export, "--overwrite").returncode == 0
    assert "SM+LN+R" in (export / "README.md").read_text()
    assert not list(tmp_path.glob("*.partial-*")) and not list(tmp_path.glob("*.previous-*"))


@pytest.mark.slow
def test_bad_imports_are_refused_in_one_line(trained, corpus, tmp_path):
    text = "".join(p.read_text() for p in sorted(pathlib.Path(corpus["source_dir"]).glob("*.py"))[:2])
    source = _gpt2_directory(tmp_path, text)
    foreign = tmp_path / "foreign"
    assert run_script("aero-export", "--workdir", trained["SM+LN+G"], "--out", foreign, "--format", "torch"
                    ).returncode == 0
    killed = tmp_path / f"w1.partial-{dead_writer()}"  # an import killed with -9
    killed.mkdir()
    assert_one_line(run_script("aero-import-hf", "--checkpoint", foreign, "--workdir", tmp_path / "w1"),
                    "aero-import-hf", 2,
                    "model_type='aero'", "accepted: 'gpt2'")
    assert not killed.exists()
    resized = tmp_path / "resized"
    resized.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (resized / name).write_bytes((source / name).read_bytes())
    config = json.loads((source / "config.json").read_text())
    (resized / "config.json").write_text(json.dumps({**config, "n_embd": 48}))
    assert_one_line(run_script("aero-import-hf", "--checkpoint", resized, "--workdir", tmp_path / "w2"),
                    "aero-import-hf", 2,
                    "is not a GPT-2 checkpoint of its config.json", "sizes disagree", "wte.weight")
    assert_one_line(run_script("aero-import-hf", "--checkpoint", tmp_path / "nowhere", "--workdir", tmp_path / "w3"),
                    "aero-import-hf", 2,
                    "has no config.json")
    (resized / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    assert_one_line(run_script("aero-import-hf", "--checkpoint", resized, "--workdir", tmp_path / "w4"),
                    "aero-import-hf", 2,
                    "sizes disagree")
    assert not any((tmp_path / f"w{i}").exists() for i in range(1, 5))
    assert_one_line(run_script("aero-import-hf", "--checkpoint", source, "--workdir", trained["SM+LN+R"]),
                    "aero-import-hf", 2,
                    "already exists")
    (resized / "config.json").write_text(json.dumps({**config, "scale_attn_weights": False}))
    assert_one_line(run_script("aero-import-hf", "--checkpoint", resized, "--workdir", tmp_path / "w5"),
                    "aero-import-hf", 2,
                    "scale_attn_weights=False is not imported")
    (resized / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(source / "model.safetensors"))
    tensors["transformer.h.1.mlp.c_fc.weight"][0, 0] = np.nan
    save_file(tensors, str(resized / "model.safetensors"))
    assert_one_line(run_script("aero-import-hf", "--checkpoint", resized, "--workdir", tmp_path / "w6"),
                    "aero-import-hf", 2, "tensor transformer.h.1.mlp.c_fc.weight holds non-finite values", "all finite")
    assert not (tmp_path / "w6").exists()
