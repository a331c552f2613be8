"""The run directory: made writable or refused, locked for a run's lifetime, written atomically.

One run at a time per workdir. A local workdir is locked with flock on `run.lock` (the OS drops
the lock when the process dies, however it dies). An object store (gs://) has no flock, so there
`run.lock` is a lease: the holder's host, pid and start time, renewed every LEASE_RENEW_S seconds
by a background thread; a lease not renewed for LEASE_STALE_S seconds is taken over. The lease
is best effort: two launches within the same few seconds can both see no lease, and the one
whose write lands last wins (the other notices when it reads the lease back and stops).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from typing import Iterator

from etils import epath

from aero_jax.errors import ConfigError

LOCK_FILE = "run.lock"
LEASE_RENEW_S = 60.0
LEASE_STALE_S = 600.0
LOCK_MODES = ("auto", "flock", "lease")


class WorkdirBusy(ConfigError):
    """Another run holds the workdir."""


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def make_workdir(workdir: str) -> epath.Path:
    """The workdir, created if needed; one clear error when it is a file or cannot be written."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file; accepted: a directory (new, or a run directory to resume)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={workdir} cannot be created ({error.strerror}: {error.filename}); accepted: "
                          f"a path whose parents are directories this user can write") from error
    if not is_remote(workdir) and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={workdir} is not writable; accepted: a directory this user can write")
    return path


def check_output_folder(folder: str, *, flag: str) -> None:
    """Refuse a local folder that could not be made or written, creating nothing (a dry run refuses what a run
    would); a bucket (gs://) is left to its first write."""
    if "://" in folder:
        return
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # the folder, or the parent it would be made in
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable"
    else:
        return
    raise ConfigError(f"cannot write to {folder} ({reason}); accepted: {flag} naming a writable folder")


def make_output_folder(folder: str, *, flag: str) -> None:
    """A folder a reader writes its outputs to, created if needed; one clear error naming `flag` otherwise."""
    check_output_folder(folder, flag=flag)
    os.makedirs(folder, exist_ok=True)


def write_text_atomically(path: epath.Path, text: str) -> None:
    """Write through `<name>.tmp` and rename; a failed write leaves neither a partial file nor the temporary."""
    tmp = path.parent / (path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def workdir_lock(workdir: str, *, mode: str = "auto") -> Iterator[None]:
    """Hold the workdir exclusively for the block; raise WorkdirBusy naming the holder otherwise."""
    if mode not in LOCK_MODES:
        raise ConfigError(f"lock mode={mode!r} is invalid; accepted: {', '.join(LOCK_MODES)}")
    if mode == "lease" or (mode == "auto" and is_remote(workdir)):
        with _lease(epath.Path(workdir) / LOCK_FILE):
            yield
    else:
        with _flock(os.path.join(workdir, LOCK_FILE)):
            yield


def _holder() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _iso(now), "renewed_unix": now,
            "token": secrets.token_hex(8)}


def _iso(unix_time: float) -> str:
    return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _busy(workdir_file, holder: dict) -> WorkdirBusy:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
    return WorkdirBusy(f"workdir {os.path.dirname(os.fspath(workdir_file))} is in use by another run ({who}); "
                       f"accepted: wait for it to end, stop it, or use another --workdir")


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise _busy(path, _read_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the flock


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


@contextlib.contextmanager
def _lease(path: epath.Path) -> Iterator[None]:
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except ValueError:
            current = {}
        age = time.time() - float(current.get("renewed_unix", 0.0))
        if age < LEASE_STALE_S:
            raise _busy(path, current)
    mine = _holder()
    path.write_text(json.dumps(mine))
    if json.loads(path.read_text()).get("token") != mine["token"]:  # another launch wrote after us
        raise _busy(path, json.loads(path.read_text()))
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(path, mine, stop), daemon=True, name="workdir-lease")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(OSError):
            path.unlink()


def _renew(path: epath.Path, holder: dict, stop: threading.Event) -> None:
    while not stop.wait(LEASE_RENEW_S):
        with contextlib.suppress(OSError):  # a missed renewal is retried; only LEASE_STALE_S of them matter
            path.write_text(json.dumps({**holder, "renewed_unix": time.time()}))
