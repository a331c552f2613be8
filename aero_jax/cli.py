"""Console entry points: aero-train, aero-eval, aero-prepare-data, aero-compile (absl flags, config files).

    aero-train --config=configs/default.py --workdir=workdirs/default [--config.train.num_steps=200]
    aero-eval --workdir=workdirs/default
    aero-prepare-data --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn
    aero-compile --config=configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn --topology=v5e:2x4

Every command ends in one line when it fails (exit status 2 for bad input, 1 for a run that
failed); the traceback goes to the workdir's logs/ folder, or to the console with --verbose.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging as std_logging
import os
import re
import sys
import tempfile
import time
from typing import Callable, List, Optional

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from aero_jax import distributed
from aero_jax.errors import BAD_INPUT, append_text, run_command

# Lazy imports: the commands import the rest of aero_jax (run_config, trainer, evaluate, aot, and through them the
# data package, TFDS and orbax) inside their functions, so that --help and a flag error are answered before those
# load (measured: aero-eval without --workdir answers in 1.6 s, and in 2.3 s with them imported here).

FLAGS = flags.FLAGS
LOG_FOLDER = "logs"
HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort")  # absl's own --help shows no flag of these commands


def _define_config_flag():
    config_flags.DEFINE_config_file("config", None, "A config file in configs/, e.g. configs/default.py[:variant].",
                                    lock_config=True)


def _define_train_flags():
    _define_config_flag()
    flags.DEFINE_string("workdir", None, "The run directory (local path or gs://); rerunning resumes it.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs off TPU pods.")
    flags.DEFINE_integer("num_processes", None, "How many processes the run has (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    _define_verbose()
    flags.mark_flags_as_required(["config", "workdir"])


def _define_verbose():
    flags.DEFINE_boolean("verbose", False, "On failure, print the full traceback too.")


# -- flags in one line -------------------------------------------------------------------------

def parse_flags(prog: str) -> Callable[[List[str]], List[str]]:
    """An absl flags parser that answers --help with the command's usage and flags (exit 0), and bad flags and
    config files in one line (exit 2)."""

    def parse(argv: List[str]) -> List[str]:
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            print(command_help(prog), flush=True)
            sys.exit(0)
        try:
            remaining = FLAGS(argv)
            if "config" in FLAGS and FLAGS["config"].value is not None:
                FLAGS.config.keys()  # a config file that failed to load raises here
            return remaining
        except Exception as error:  # noqa: BLE001 - config files may raise anything
            message = describe_flag_error(error, argv)
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
        sys.exit(BAD_INPUT)

    return parse


def command_help(prog: str) -> str:
    """What `prog --help` prints: its usage line of this module's docstring, its flags and, when it reads a config
    file, how a flag sets one field of it."""
    usage = next(line.strip() for line in __doc__.splitlines() if line.strip().startswith(f"{prog} "))
    own_flags = FLAGS.module_help(sys.modules[__name__]).strip().split("\n", 1)[1]  # without the module's name
    lines = [f"usage: {usage}", "", "flags:", own_flags]
    if "config" in FLAGS:
        from aero_jax.run_config import base_config  # lazy: see the note on imports

        fields = ", ".join(f"{name}.*" if isinstance(value, ml_collections.ConfigDict) else name
                           for name, value in base_config().items())
        lines.append(f"  --config.FIELD=VALUE: sets one field of the config file, e.g. --config.train.num_steps=200;\n"
                     f"    fields: {fields} (docs/training.md)")
    return "\n".join(lines)


def describe_flag_error(error: Exception, argv: List[str]) -> str:
    """One line for an error met while loading a config file or applying an override."""
    text = str(error)
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    if "failure to load" in text or "Failed loading config file" in text:
        reason = re.findall(r"\[Errno \d+\] ([^:\n]+)", text)
        return (f"--config={spec} cannot be loaded ({reason[0] if reason else _last_line(text)}); accepted: a "
                f"config file such as configs/default.py[:variant]")
    if "Error whilst parsing config file" in text:
        return f"--config={spec}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', _last_line(text))}"
    unknown = re.findall(r"\\?'(\w+)\\?'", text)
    if isinstance(error, (AttributeError, KeyError)) and unknown:
        given = next((a.split("=", 1)[0][2:] for a in argv if a.startswith("--config.")
                      and re.search(rf"\.{unknown[0]}(=|$)", a.split("=", 1)[0])), unknown[0])
        guess = re.findall(r'Did you mean "(\w+)"', text)
        given = given.removeprefix("config.")
        hint = f"; did you mean {given.rpartition('.')[0]}.{guess[0]}?" if guess else ""
        return f"unknown config field {given}{hint}"
    if isinstance(error, flags.Error):
        return text.strip().splitlines()[0]
    return f"{type(error).__name__}: {_last_line(text)}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- aero-train ----------------------------------------------------------------------------------

def resolved_config(flag):
    """The parsed config; a `--config.model.preset` override re-expands the model fields from it."""
    config = flag.value
    overrides = config_flags.get_override_values(flag)
    if "model.preset" not in overrides:
        return config
    from aero_jax.run_config import with_preset  # lazy: see the note on imports

    file_config = load_config_file(config_flags.get_config_filename(flag))
    explicit = [path.split(".", 1)[1] for path in overrides if path.startswith("model.") and path != "model.preset"]
    with config.unlocked():
        config.model = with_preset(config.model, overrides["model.preset"], file_section=file_config.model,
                                   explicit=explicit)
    return config


def load_config_file(spec: str, *, function: str = "get_config"):
    """`get_config(variant)` (or `function`) of a file named as --config names it ('path.py[:variant]')."""
    path, *variant = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("aero_jax_config_file", path)
    if module_spec is None:  # a folder, or a file without the .py suffix
        raise OSError(errno.EINVAL, "not a Python file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, function)(*variant)


def _report(summary: dict) -> None:
    if jax.process_index() != 0:
        return
    lines = [f"workdir: {summary['workdir']} (metrics.jsonl, tensorboard/, checkpoints/, eval/, summary.json)"]
    if "validation_perplexity" in summary:
        lines = [f"validation perplexity: {summary['validation_perplexity']:.3f} "
                 f"(loss {summary['validation_loss']:.4f}) after {summary['step']} steps of {summary['architecture']}",
                 f"same validation rows, unigram perplexity: {summary['unigram_perplexity']:.3f}",
                 f"same validation rows, bigram perplexity:  {summary['bigram_perplexity']:.3f}",
                 f"validation rows: {summary['validation_rows']}"] + lines
    print("\n".join(lines), flush=True)


def _quiet_libraries(log_file: Optional[str] = None) -> None:
    """Keep the console for the run's own lines: library logs go to `log_file` (or only errors show)."""
    logging.set_verbosity(logging.ERROR)
    if log_file is None:
        return
    handler = std_logging.FileHandler(log_file)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = std_logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(std_logging.WARNING)


def train_log_path(workdir: str) -> str:
    """This process's log file: in the workdir's logs/ when local, else in the local temp folder."""
    name = "aero-train.log" if jax.process_index() == 0 else f"aero-train.process{jax.process_index()}.log"
    if "://" in workdir:
        return os.path.join(tempfile.gettempdir(), f"{os.getpid()}-{name}")
    folder = os.path.join(workdir, LOG_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def last_checkpoint_note(workdir: str) -> str:
    """'; last good checkpoint: step N ...' from the workdir's committed checkpoints, for failure lines."""
    folder = os.path.join(workdir, "checkpoints")
    try:
        steps = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
    except OSError:
        steps = []
    if not steps:
        return "; no checkpoint was saved yet"
    return f"; last good checkpoint: step {steps[-1]} in {folder}; rerun the same command to resume from it"


def check_before_writing(config) -> None:
    """Refuse what the config alone makes a run refuse (a value, the tokenizer's vocabulary, the mesh on these
    devices) before the workdir or its log is touched: a refused run creates and changes nothing."""
    # lazy: see the note on imports
    from aero_jax.run_config import model_config_from, validate
    from aero_jax.sharding import make_mesh
    from aero_jax.trainer import checked_tokenizer

    validate(config)
    checked_tokenizer(config, model_config_from(config.model))
    make_mesh(config.mesh)


def _train_main(argv):
    del argv
    from aero_jax.trainer import train  # lazy: see the note on imports
    from aero_jax.workdir import make_workdir

    workdir, log = FLAGS.workdir, {}

    def body():
        _quiet_libraries()
        config = resolved_config(FLAGS["config"])
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        check_before_writing(config)
        make_workdir(workdir)
        log["path"] = train_log_path(workdir)
        append_text(log["path"], f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        _quiet_libraries(log["path"])
        _report(train(config, workdir))

    run_command("aero-train", body, verbose=FLAGS.verbose, log_path=lambda: log.get("path"),
                context=lambda error: _checkpoint_context(error, workdir),
                interrupted=lambda: "rerun the same command to resume" if "://" in workdir else
                last_checkpoint_note(workdir).removeprefix("; "))


def _checkpoint_context(error: BaseException, workdir: str) -> str:
    from aero_jax.trainer import Divergence  # lazy: see the note on imports

    # a Divergence's message names the last good checkpoint itself
    return "" if isinstance(error, Divergence) or "://" in workdir else last_checkpoint_note(workdir)


def train():
    _define_train_flags()
    app.run(_train_main, flags_parser=parse_flags("aero-train"))


# -- aero-eval -----------------------------------------------------------------------------------

def _eval_main(argv):
    del argv
    _quiet_libraries()

    def body():
        from aero_jax.evaluate import evaluate_workdir  # lazy: see the note on imports

        print(json.dumps(evaluate_workdir(FLAGS.workdir), indent=2), flush=True)

    run_command("aero-eval", body, verbose=FLAGS.verbose)


def evaluate():
    flags.DEFINE_string("workdir", None, "A run directory written by aero-train.")
    _define_verbose()
    flags.mark_flags_as_required(["workdir"])
    app.run(_eval_main, flags_parser=parse_flags("aero-eval"))


# -- aero-prepare-data ----------------------------------------------------------------------------

def _prepare_main(argv):
    del argv
    _quiet_libraries()

    def body():
        from aero_jax.run_config import model_config_from, validate  # lazy: see the note on imports
        from aero_jax.trainer import checked_tokenizer, load_data

        config = resolved_config(FLAGS["config"])
        validate(config)
        model_config = model_config_from(config.model)
        prepared = load_data(config, checked_tokenizer(config, model_config), model_config.max_len, publish=True)
        for split, rows in zip(("train", "validation"), prepared):
            print(json.dumps({"split": split, "rows": rows.shape[0], "seq_len": rows.shape[1], "dtype": str(rows.dtype),
                              "tokens": int(rows.size), "bytes": int(rows.nbytes), "cache_dir": config.data.cache_dir,
                              "file": rows.filename}), flush=True)

    run_command("aero-prepare-data", body, verbose=FLAGS.verbose,
                interrupted=lambda: "finished cache files are kept, an unfinished one is discarded; rerun the same "
                                    "command to finish")


def prepare_data():
    """Tokenize and pack a config's train and validation splits into the cache, once, before any run reads them."""
    _define_config_flag()
    _define_verbose()
    flags.mark_flags_as_required(["config"])
    app.run(_prepare_main, flags_parser=parse_flags("aero-prepare-data"))


# -- aero-compile ---------------------------------------------------------------------------------

def _compile_main(argv):
    del argv
    from aero_jax import aot  # lazy: see the note on imports

    outcome = {}

    def body():
        _quiet_libraries()
        topology = aot.parse_topology(FLAGS.topology)
        report = aot.compile_for_topology(resolved_config(FLAGS["config"]), topology, dump_dir=FLAGS.dump,
                                          steps=aot.checked_steps(FLAGS.steps))
        print(json.dumps(report, indent=2) if FLAGS.json else aot.format_report(report), flush=True)
        outcome["fits"] = report["fits"]

    run_command("aero-compile", body, verbose=FLAGS.verbose)
    sys.exit(0 if outcome["fits"] else 1)


def compile_for_tpu():
    """Compile a config's train and eval steps for a TPU slice without running them; exit 1 when they do not fit."""
    from aero_jax import aot  # lazy: see the note on imports

    aot.quiet_libtpu()
    _define_config_flag()
    flags.DEFINE_string("topology", None, f"The TPU slice: {aot.ACCEPTED_TOPOLOGIES}.")
    flags.DEFINE_list("steps", list(aot.STEPS), f"Which steps to compile: {', '.join(aot.STEPS)}.")
    flags.DEFINE_boolean("json", False, "Print the report as JSON.")
    flags.DEFINE_string("dump", None, "A folder for the optimized HLO text of each step (never overwritten).")
    _define_verbose()
    flags.mark_flags_as_required(["config", "topology"])
    app.run(_compile_main, flags_parser=parse_flags("aero-compile"))
