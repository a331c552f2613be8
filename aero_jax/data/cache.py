"""An on-disk array cache that is trusted only when complete and built for the same key.

Layout in `cache_dir`, for `stem = <name>-<first 16 hex digits of sha256(key)>`:
  <stem>.npy   the array, written first (temporary file, fsync, os.replace); a build may stream it
               block by block (`Rows`), so no array larger than one block is ever held in memory
  <stem>.json  the manifest (key, shape, dtype, byte count, sha256), written last the same way
  <stem>.lock  an flock file, so concurrent builders of one key wait instead of racing
A manifest is removed before its array is rewritten, so a manifest on disk always describes the
array that was finished before it. Anything else (temporary files left by a crash, an array
without manifest, a manifest that does not match, an array whose sha256 differs from the
manifest's, checked on first use in each process) is never trusted, and rebuilt. A trusted cache
is read without taking the lock, so a read-only cache folder serves readers.

A bucket (gs://) cache is read through a copy on each host's disk (`~/.cache/aero_jax/mirror/`),
streamed and checked against the bucket's manifest: every host copies, none tokenizes; only
`publish` (aero-prepare-data) fills the bucket, array first, manifest last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import struct
import tempfile
from typing import Callable, Iterable, NamedTuple, Optional, Tuple, Union

import numpy as np
from etils import epath

from aero_jax.config import ConfigError

FORMAT_VERSION = 1  # bump when the array layout or the manifest changes
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*")

_HEADER_BYTES = 128  # the .npy header of a streamed array: room for any shape of a few dimensions
_COPY_BYTES = 64 << 20  # a bucket's array is copied in pieces of about this size
MIRROR_ROOT = "~/.cache/aero_jax/mirror"  # where each host keeps its copies of bucket caches

log = logging.getLogger(__name__)


class Rows(NamedTuple):
    """Blocks of rows [n, *row_shape] of one dtype, written to the cache as they come."""

    row_shape: Tuple[int, ...]
    dtype: np.dtype
    blocks: Iterable[np.ndarray]


def cached_array(cache_dir: str, key: dict, build: Callable[[], Union[np.ndarray, Rows]], *,
                 name: str, publish: bool = False) -> np.ndarray:
    """The array for `key`: read (memory-mapped, read-only) when cached, else built and cached.

    `build()` returns the array, or `Rows` whose blocks are streamed to disk one at a time. A bucket
    cache_dir is read through this host's mirror; `publish` builds a missing entry and uploads it.
    """
    if not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"cache name={name!r} is invalid; accepted: letters, digits, '_' and '-'")
    if "://" in os.fspath(cache_dir):
        return _through_mirror(os.fspath(cache_dir), key, build, name=name, publish=publish)
    full_key = canonical_key(key)
    stem = os.path.join(cache_dir, f"{name}-{key_digest(full_key)[:16]}")
    array_path, manifest_path = stem + ".npy", stem + ".json"
    if os.path.exists(manifest_path) and not _manifest_problem(array_path, manifest_path, full_key):
        return np.load(array_path, mmap_mode="r")
    os.makedirs(cache_dir, exist_ok=True)
    with exclusive_lock(stem + ".lock"):
        cached = _load_trusted(array_path, manifest_path, full_key)
        if cached is not None:
            return cached
        _remove_stale_temporaries(stem)
        built = build()
        rows = built if isinstance(built, Rows) else Rows(built.shape[1:], built.dtype, [built])
        _remove_if_present(manifest_path)
        manifest = _manifest(full_key, write_atomically(array_path, lambda f: write_rows(f, rows)))
        write_atomically(manifest_path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return np.load(array_path, mmap_mode="r")


def _through_mirror(bucket: str, key: dict, build, *, name: str, publish: bool) -> np.ndarray:
    """A bucket's cached array, from a verified copy on this host's disk (copied the first time)."""
    full_key = canonical_key(key)
    base = f"{name}-{key_digest(full_key)[:16]}"
    mirror = os.path.join(os.path.expanduser(MIRROR_ROOT), hashlib.sha256(bucket.encode()).hexdigest()[:16])
    remote = epath.Path(bucket)
    if (remote / f"{base}.json").exists():
        try:
            return cached_array(mirror, key, lambda: _download(remote / base, full_key), name=name)
        except ConfigError:
            if not publish:
                raise
            log.warning("the bucket's %s is damaged; preparing and uploading it again", base)  # repaired below
    elif not publish:
        raise ConfigError(f"cache_dir={bucket} holds no {base}.json; accepted: a bucket filled once by "
                          f"aero-prepare-data with this config (every host then copies it, none tokenizes)")
    array = cached_array(mirror, key, build, name=name)
    remote.mkdir(parents=True, exist_ok=True)
    if (remote / f"{base}.json").exists():  # a damaged entry: no reader may trust it while it is replaced
        (remote / f"{base}.json").unlink()
    for suffix in (".npy", ".json"):  # the manifest last: a reader never trusts a half-uploaded array
        _copy(os.path.join(mirror, base + suffix), remote / f"{base}{suffix}")
    return array


def _copy(source: str, target: epath.Path) -> None:
    with open(source, "rb") as f, target.open("wb") as out:
        while piece := f.read(_COPY_BYTES):
            out.write(piece)


def _download(remote_base: epath.Path, full_key: dict) -> Rows:
    """The rows of a bucket's array, streamed in pieces; its sha256 must equal its manifest's."""
    manifest_path = remote_base.parent / f"{remote_base.name}.json"
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("key") != full_key:
        raise ConfigError(f"{manifest_path} describes another array (its key differs); accepted: a cache written by "
                          f"aero-prepare-data")
    shape, dtype = manifest["shape"], np.dtype(manifest["dtype"])
    row_bytes = dtype.itemsize * math.prod(shape[1:])
    array_path = remote_base.parent / f"{remote_base.name}.npy"

    def blocks():
        digest, left = hashlib.sha256(), shape[0]
        with array_path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
            if (list(header[0]), header[2]) != (shape, dtype):
                raise ConfigError(f"{array_path} holds {header[2]} {list(header[0])}, its manifest says {dtype} "
                                  f"{shape}; accepted: a complete upload (run aero-prepare-data again)")
            while left:
                rows = min(left, max(1, _COPY_BYTES // max(row_bytes, 1)))
                data = f.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise ConfigError(f"{array_path} is shorter than its manifest says; accepted: a complete upload "
                                      f"(run aero-prepare-data again)")
                digest.update(data)
                left -= rows
                yield np.frombuffer(data, dtype).reshape(rows, *shape[1:])
        if digest.hexdigest() != manifest["sha256"]:
            raise ConfigError(f"{array_path} differs from its manifest (sha256); accepted: a complete upload (run "
                              f"aero-prepare-data again)")

    return Rows(tuple(shape[1:]), dtype, blocks())


def canonical_key(key: dict) -> dict:
    """The key with the format version added, as it reads back from JSON."""
    try:
        text = json.dumps({**key, "cache_format": FORMAT_VERSION}, sort_keys=True)
    except TypeError as error:
        raise ConfigError(f"cache key values must be JSON values (str, number, bool, list, dict): {error}") from error
    return json.loads(text)


def key_digest(full_key: dict) -> str:
    """Hex sha256 of the key's sorted JSON: the same key gives the same file name everywhere."""
    return hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()


def _load_trusted(array_path: str, manifest_path: str, full_key: dict) -> Optional[np.ndarray]:
    """The cached array if its manifest exists and matches it and the key; otherwise None."""
    if not os.path.exists(manifest_path):
        if os.path.exists(array_path):
            log.warning("cache %s has no manifest (interrupted build); rebuilding", array_path)
        return None
    problem = _manifest_problem(array_path, manifest_path, full_key)
    if problem:
        log.warning("cache %s is not trusted (%s); rebuilding", array_path, problem)
        return None
    return np.load(array_path, mmap_mode="r")


def _manifest_problem(array_path: str, manifest_path: str, full_key: dict) -> str:
    """Why the cached files cannot be trusted, or "" when they can."""
    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read())
        promised = (list(manifest["shape"]), manifest["dtype"], int(manifest["nbytes"]))
        manifest_key = manifest["key"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest: {error!r}"
    if manifest_key != full_key:
        return "manifest key differs"
    try:
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        return f"unreadable array: {error!r}"
    found = (list(array.shape), str(array.dtype), os.path.getsize(array_path) - array.offset)
    if found != promised:
        return f"array has shape, dtype, bytes {found}; manifest says {promised}"
    return _checksum_problem(array_path, array, manifest.get("sha256"))


_VERIFIED = set()  # (path, size, mtime) of arrays whose sha256 this process has checked


def _checksum_problem(array_path: str, array: np.ndarray, promised: Optional[str]) -> str:
    """"" when the array's sha256 equals the manifest's (checked once per process and file version)."""
    stat = os.stat(array_path)
    version = (array_path, stat.st_size, stat.st_mtime_ns)
    if version in _VERIFIED:
        return ""
    found = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
    if found != promised:
        return f"sha256 {found[:12]}... differs from the manifest's {str(promised)[:12]}..."
    _VERIFIED.add(version)
    return ""


def _manifest(full_key: dict, written: dict) -> dict:
    """What a later call checks before trusting the array: its key, and the shape, bytes and sha256 written."""
    return {"key": full_key, **written}


def write_rows(f, rows: Rows) -> dict:
    """Write an .npy file block by block and return what the manifest promises of it.

    The header, whose row count is known only at the end, fills a fixed-size space written last.
    """
    dtype, row_shape = np.dtype(rows.dtype), tuple(rows.row_shape)
    f.write(b"\0" * _HEADER_BYTES)
    digest, count, blocks = hashlib.sha256(), 0, iter(rows.blocks)
    try:
        for block in blocks:
            block = np.ascontiguousarray(block)
            if block.dtype != dtype or block.shape[1:] != row_shape:
                raise ValueError(f"a block of {block.dtype} {block.shape} among rows of {dtype} [n, {row_shape}]")
            data = memoryview(block).cast("B")
            f.write(data)
            digest.update(data)
            count += block.shape[0]
    finally:  # a failed write closes the stream at once (its open files, its progress bar)
        getattr(blocks, "close", lambda: None)()
    shape = (count, *row_shape)
    f.seek(0)
    f.write(_npy_header(shape, dtype))
    f.seek(0, os.SEEK_END)
    return {"shape": list(shape), "dtype": str(dtype), "nbytes": count * dtype.itemsize * math.prod(row_shape),
            "sha256": digest.hexdigest()}


def _npy_header(shape: Tuple[int, ...], dtype: np.dtype) -> bytes:
    """An .npy version 1.0 header of exactly _HEADER_BYTES bytes (the format allows space padding)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    room = _HEADER_BYTES - 10  # magic string (6), version (2), header length (2)
    if len(text) >= room:
        raise ValueError(f"an array of shape {shape} needs a longer .npy header than {_HEADER_BYTES} bytes")
    return np.lib.format.magic(1, 0) + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode("latin1")


def write_atomically(path: str, write: Callable):
    """Write through a temporary file in the same folder, fsync, then rename over `path`; what `write` returns."""
    folder, base = os.path.split(path)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            written = write(f)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(temporary)  # mkstemp makes 0600; others may read the cache
        os.replace(temporary, path)
    except OSError as error:
        _remove_if_present(temporary)
        if error.errno == errno.ENOSPC and not error.filename:  # a write names no file: name the cache's
            raise OSError(errno.ENOSPC, error.strerror, path) from error
        raise
    except BaseException:
        _remove_if_present(temporary)
        raise
    _fsync_folder(folder)
    return written


_TEMPORARY = re.compile(r"\.(?P<stem>[A-Za-z0-9_-]+-[0-9a-f]{16})\.(npy|json)\..+\.tmp")  # of a cache entry


def _remove_stale_temporaries(stem: str) -> None:
    """Delete the temporary files crashed builds left: of this key (we hold its lock), and of any other key
    in the folder that no process is building (its lock exists and is free), e.g. one a changed key made
    obsolete."""
    folder, base = os.path.split(stem)
    for entry in os.listdir(folder):
        match = _TEMPORARY.fullmatch(entry)
        if match and (match["stem"] == base or _lock_is_free(os.path.join(folder, match["stem"] + ".lock"))):
            log.warning("removing %s left by an interrupted cache build", entry)
            _remove_if_present(os.path.join(folder, entry))


def _lock_is_free(lock_path: str) -> bool:
    """True when no process holds the flock on `lock_path` (taken and released at once to find out); a lock
    file that is missing or unreadable is not known to be free."""
    try:
        f = open(lock_path, "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return True


def follow_umask(path: str) -> None:
    """Give a file the mode a plain open() would (0666 less the umask), e.g. after a writer that makes it 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def exclusive_lock(lock_path: str):
    """Hold an exclusive flock on `lock_path` (released by the OS if this process dies)."""
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_folder(folder: str) -> None:
    """Make a rename durable (POSIX needs the directory entry flushed too)."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
