"""How a command ends when it fails or is interrupted: one line, and an exit status of its kind.

Bad input (a config value, a path, a busy workdir) exits with status 2; a run that started and
then failed (divergence, a full disk, a corrupt file) exits with status 1; Ctrl-C (SIGINT) exits
with status 130, saying what was kept. The full traceback goes to a log file or, with --verbose,
to the console.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
from typing import Callable, Iterator, List, Optional, Tuple

from absl import logging

BAD_INPUT = 2
RUN_FAILED = 1
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
NOTHING_WRITTEN = "nothing was written"

_NO_SPACE = "No space left on device"
_QUOTED_PATH = re.compile(r'"(/[^"]+|gs://[^"]+)"')
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class ConfigError(ValueError):
    """A configuration value, path or request outside what the program accepts."""


class RunFailed(RuntimeError):
    """A run that started could not go on; the message says what is left and what to do."""


def classify(error: BaseException) -> Tuple[int, str]:
    """(exit status, one-line message) for an exception that ended a command."""
    if isinstance(error, ConfigError):
        return BAD_INPUT, _one_line(str(error))
    if isinstance(error, RunFailed):
        return RUN_FAILED, _one_line(str(error))
    os_error = _os_error(error)
    if os_error is not None and os_error.errno in _UNWRITABLE:
        where = os_error.filename or "a file"
        return BAD_INPUT, f"cannot write {where} ({os_error.strerror}); accepted: a writable location"
    if no_space(error):
        return RUN_FAILED, f"no space left on device while writing {_written_path(error)}"
    if os_error is not None:
        where = f" ({os_error.filename})" if os_error.filename else ""
        return RUN_FAILED, f"{os_error.strerror or type(os_error).__name__}{where}"
    return RUN_FAILED, f"{type(error).__name__}: {_one_line(str(error)) or 'no message'}"


def no_space(error: BaseException) -> bool:
    """True when the error (or one it came from) is a full disk, as an OSError or in a library's text."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or _NO_SPACE in str(e) for e in _chain(error))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _os_error(error: BaseException) -> Optional[OSError]:
    return next((e for e in _chain(error) if isinstance(e, OSError) and e.errno is not None), None)


def _written_path(error: BaseException) -> str:
    for e in _chain(error):
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        match = _QUOTED_PATH.search(str(e))
        if match:
            return match.group(1)
    return "a file"


def _one_line(text: str) -> str:
    """The first non-empty line of a message, without surrounding quotes."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a KeyError's message is the quoted key
        text = text[1:-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def honour_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt even where the command started with SIGINT ignored (a script's background
    job), so a long command can still be stopped, in one line."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_command(prog: str, body: Callable[[], None], *, verbose: bool, log_path: Callable[[], Optional[str]] = None,
                context: Callable[[BaseException], str] = lambda error: "",
                interrupted: Callable[[], str] = lambda: NOTHING_WRITTEN) -> None:
    """Run `body`; any exception becomes one line on stderr and the exit status of its kind.

    `log_path()` names the file that receives the traceback (None: only --verbose shows it);
    `context(error)` adds what the user needs to go on after a failed run (e.g. the last good checkpoint);
    `interrupted()` says what a Ctrl-C left behind.
    """
    try:
        body()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _end(prog, f"interrupted; {interrupted()}", INTERRUPTED, verbose=verbose, path=log_path() if log_path else None)
    except BaseException as error:  # noqa: B036 - every failure must end in one line
        code, message = classify(error)
        path = log_path() if log_path else None
        extra = context(error) if code == RUN_FAILED else ""
        where = "" if code == BAD_INPUT else (f" (traceback: {path})" if path else " (--verbose shows the traceback)")
        _end(prog, f"{message}{extra}{where}", code, verbose=verbose, path=path)


def _end(prog: str, message: str, code: int, *, verbose: bool, path: Optional[str]) -> None:
    """Exit with `code` after one line on stderr; the traceback goes to `path` and, with --verbose, stderr."""
    trace = traceback.format_exc()
    if path:
        append_text(path, trace)
    if verbose:
        sys.stderr.write(trace)
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    if not verbose:
        _silence_stderr(path)  # background writers may still complain while the process exits
    sys.exit(code)


def append_text(path: str, text: str) -> None:
    """Append to a log file; a log that cannot be written never hides the error being reported."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError:
        pass


def _silence_stderr(path: Optional[str]) -> None:
    """Send whatever is printed to stderr from now on to the log file (or nowhere)."""
    sys.stderr.flush()
    try:
        fd = os.open(path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 2)


def argparse_main(prog: str, parser, body: Callable, argv: Optional[List[str]] = None, *,
                  interrupted: Callable[[], str] = lambda: NOTHING_WRITTEN) -> None:
    """Entry point of an argparse command: `--verbose` added, failures in one line (`interrupted`: see
    run_command)."""
    parser.add_argument("--verbose", action="store_true", help="On failure, print the full traceback too.")

    def one_line_error(message: str):  # argparse prints the usage too; the user gets one line
        print(f"{prog}: {message}; see {prog} --help", file=sys.stderr, flush=True)
        sys.exit(BAD_INPUT)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # orbax and TFDS log every read at INFO through absl
    run_command(prog, lambda: body(args), verbose=args.verbose, interrupted=interrupted)

