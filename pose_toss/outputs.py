"""Writing outputs so that nothing a user owns is left half-written or silently replaced."""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


class OutputExistsError(FileExistsError):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the output
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj):
    """``obj`` with numpy scalars made Python numbers and inf / NaN made null (strict JSON)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(out: str | os.PathLike, overwrite: bool, inputs: Iterable = ()) -> Path:
    """Refuse a non-empty output directory unless ``overwrite`` was asked for, and refuse, even with
    it, an output that is the working directory, one of its parents, or holds any of ``inputs`` (the
    files and folders the command reads): replacing it would delete what the command needs."""
    out = Path(out)
    where = _resolved(out)
    cwd = Path.cwd().resolve()
    if _within(cwd, where):
        what = "the working directory" if where == cwd else "a parent of the working directory"
        raise OutputExistsError(f"output directory {out} is {what}; give a new folder for the outputs")
    for item in inputs:
        if item is None or not str(item):
            continue
        if _within(_resolved(item), where):
            raise OutputExistsError(f"output directory {out} holds {item}, an input of this command; "
                                    "give a separate folder for the outputs")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {out} is not empty; pass --overwrite to replace it")
    return out


def check_output_file(out: str | os.PathLike, overwrite: bool, inputs: Iterable = ()) -> Path:
    """Refuse an output file that is one of ``inputs`` (even with ``overwrite``: writing it would destroy what
    the command reads), and an existing one unless ``overwrite`` was asked for."""
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file name for the output (e.g. {out / 'out'}"
                                f"{out.suffix or ''}), or another path")
    if out.exists():
        for item in inputs:
            if item is not None and _resolved(item) == _resolved(out):
                raise OutputExistsError(f"{out} is the input {item} of this command; give another file name for "
                                        "the output")
        if not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    return out


def is_nonempty_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


def replace_dir(new: Path, out: Path) -> None:
    """Move the complete directory ``new`` to ``out``; an existing ``out`` is renamed aside first and
    deleted only once ``new`` is in its place."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(new, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, out)


def remove_orphaned_stages(folder: str | os.PathLike, log=None, name: str | None = None) -> list[Path]:
    """Delete the ``.*.partial`` and ``.*.old`` folders that a killed process left in ``folder`` (only those
    staging the output ``name`` when given), and with ``name`` the ``.<name>.*.tmp`` files that
    ``atomic_write_bytes`` was writing for it: they are this package's own staging (never anything a user
    wrote) and hold no complete output."""
    folder = Path(folder)
    prefix = "" if name is None else glob.escape(name) + "."
    removed = []
    if folder.is_dir():
        for p in sorted(folder.glob(f".{prefix}*.partial")) + sorted(folder.glob(f".{prefix}*.old")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        for p in sorted(folder.glob(f".{prefix}*.tmp")) if name is not None else []:
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed and log is not None:
        log(f"removed {len(removed)} unfinished staging folder(s) or file(s) left by an interrupted run in {folder}")
    return removed


class LockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


_held_locks: dict[Path, list] = {}  # lock path -> [open file, depth]: re-entrant within a process


def lock_path(out: str | os.PathLike) -> Path:
    out = _resolved(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, log=None) -> Iterator[Path]:
    """Hold an exclusive lock on the output directory ``out`` for the duration of the block.

    The lock is ``.<name>.lock`` beside ``out`` (so it survives ``out`` being swapped for a staged
    copy), holds the owner's PID and host, and is an ``flock``: the kernel releases it when the
    process dies, so a lock file left by a killed run is stale and is taken over (and said so).
    A second process asking for a held lock fails at once, naming the holder.
    """
    path = lock_path(out)
    if path in _held_locks:
        _held_locks[path][1] += 1
        try:
            yield path
        finally:
            _held_locks[path][1] -= 1
        return
    import fcntl
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise LockedError(f"{Path(out)} is in use by another pose-toss process ({holder}); wait for it to "
                              f"finish, or pick another output directory") from None
        # The file may have been unlinked by its previous holder between our open and our flock.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    f.seek(0)
    previous = f.read().strip()
    if previous and log is not None:
        log(f"took over a stale lock on {Path(out)} ({previous}, no longer running)")
    # Staging folders of this output that a killed process left: nobody else can be writing them now.
    remove_orphaned_stages(path.parent, name=path.name[1:-len(".lock")])
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    _held_locks[path] = [f, 1]
    try:
        yield path
    finally:
        del _held_locks[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        f.close()


@contextlib.contextmanager
def staged_output_dir(out: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                      lock: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out`` in one rename.

    An interrupted run leaves ``out`` as it was (absent, or the previous complete output). ``out`` is
    locked meanwhile (``run_lock``, re-entrant: a command that already holds it, to cover its computing
    too, keeps it); ``lock=False`` inside a directory whose own lock covers it (a run's checkpoints).
    """
    with run_lock(out) if lock else contextlib.nullcontext():
        out = check_output_dir(out, overwrite, inputs)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        os.chmod(stage, 0o777 & ~_umask())
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        replace_dir(stage, out)


def describe_os_error(e: OSError) -> str:
    path = e.filename if e.filename is not None else None
    cause = e.strerror or str(e)
    hint = {errno.ENOSPC: " (the disk is full: free space or write elsewhere)",
            errno.EACCES: " (no permission: pick a folder you can write to)",
            errno.EROFS: " (read-only file system: pick a writable folder)",
            errno.EDQUOT: " (disk quota exceeded)"}.get(e.errno, "")
    return f"{path}: {cause}{hint}" if path else f"{cause}{hint}"
