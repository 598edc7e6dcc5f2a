"""Atomic file and folder writes: nothing half-written is ever left where the user looks.

Shared by `synth` (rendered WAVs) and `trainer` (datasets, checkpoints, presets).

Folders are replaced with one atomic swap (Linux `renameat2(RENAME_EXCHANGE)`), so the destination
name always holds either the old or the new folder, even under `kill -9`. Where the swap is not
available (another OS, a file system without it) the old folder is moved aside to
`.<name>.old-<pid>` for the instant between two renames; the next `atomic_dir` or `recover_dir`
on that destination puts it back if its writer died there. Temporary files and folders carry their
writer's pid, so leftovers of a killed writer are removed by the next write to the same name.

`SYNTH_FSUTIL_TEST_HOOK` (tests only): JSON `{"stage", "name", "after", "marker", "sleep",
"no_exchange"}`; at `stage` for a destination called `name` (after `after` earlier hits) the writer
creates `marker` and sleeps, so a test can `kill -9` it at exactly that point.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode(is_dir: bool) -> int:
    """The mode open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    mask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return (0o777 if is_dir else 0o666) & ~mask


from synth.errors import UserError  # noqa: E402 - after the stdlib imports, and light


class DestinationExists(UserError, FileExistsError):
    """`atomic_dir(dest, replace=False)` found `dest` already there (a one-line error in the CLIs)."""


_HOOK_HITS: dict[tuple[str, str], int] = {}


def _hook_cfg() -> dict:
    raw = os.environ.get("SYNTH_FSUTIL_TEST_HOOK")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _test_hook(stage: str, dest: Path) -> None:
    """Pause at `stage` when SYNTH_FSUTIL_TEST_HOOK asks for it (see the module docstring)."""
    cfg = _hook_cfg()
    if cfg.get("stage") != stage or cfg.get("name", dest.name) != dest.name:
        return
    key = (stage, dest.name)
    _HOOK_HITS[key] = _HOOK_HITS.get(key, 0) + 1
    if _HOOK_HITS[key] <= int(cfg.get("after", 0)):
        return
    import time

    if cfg.get("marker"):
        Path(cfg["marker"]).write_text(str(os.getpid()))
    time.sleep(float(cfg.get("sleep", 60)))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # EPERM: it exists
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _hook_cfg().get("no_exchange") or not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False     # not supported here (old kernel, FUSE, NFS...): use the two-rename path
    raise OSError(err, f"swapping {a} and {b}: {os.strerror(err)}")


def _leftovers(parent: Path, name: str) -> list[tuple[str, int, Path]]:
    """(kind, pid, path) of this module's temporaries for destination `name` in `parent`."""
    pat = re.compile(re.escape(f".{name}.") + r"(?:(old|trash)-(\d+)|(\d+)-[A-Za-z0-9_]+(\.part|\..*)?)")
    out = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return out
    for e in entries:
        m = pat.fullmatch(e.name)
        if not m:
            continue
        if m.group(1):
            out.append((m.group(1), int(m.group(2)), Path(e.path)))
        else:
            out.append(("part" if m.group(4) == ".part" else "file", int(m.group(3)), Path(e.path)))
    return out


def recover_dir(dest: str | os.PathLike) -> bool:
    """Repair what a killed `atomic_dir` writer left beside `dest`; True if `dest` was put back.

    If `dest` is missing and a dead writer's `.<name>.old-<pid>` exists, it is renamed back to
    `dest` (the newest one, should there be several). Dead writers' temporary folders are deleted.
    Writers that are still running are left alone.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    restored = False
    dead = [(k, pid, p) for k, pid, p in _leftovers(parent, dest.name) if not _pid_alive(pid)]
    olds = sorted((p for k, _, p in dead if k == "old"), key=lambda p: p.stat().st_mtime if p.exists() else 0)
    if olds and not os.path.lexists(dest):
        try:
            os.rename(olds[-1], dest)
            restored = True
            _fsync_dir(parent)
        except OSError:
            pass
    for kind, _, p in dead:
        if kind == "file":
            continue
        if p.exists() and not (restored and p == olds[-1]):
            shutil.rmtree(p, ignore_errors=True)
    return restored


def _clean_stale_files(parent: Path, name: str) -> None:
    for kind, pid, p in _leftovers(parent, name):
        if kind == "file" and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is fsynced and renamed onto `dest`.

    On any exception the temporary file is removed and `dest` is untouched. Temporary files left
    by killed writers of the same `dest` are removed first.
    `suffix` defaults to dest's suffix, so libraries that sniff the extension (soundfile) still work.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    _clean_stale_files(parent, dest.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}-",
                               suffix=dest.suffix if suffix is None else suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode(is_dir=False))
        _test_hook("file-written", dest)
        os.replace(tmp_path, dest)
        _fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `dest` atomically."""
    atomic_write_bytes(dest, text.encode("utf-8"))


def _discard(path: Path, parent: Path, name: str) -> None:
    """Delete a folder that is out of use: renamed to `.<name>.trash-<pid>` first, so a kill during
    the deletion never leaves a half-deleted folder under a name `recover_dir` would restore."""
    trash = parent / f".{name}.trash-{os.getpid()}"
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it takes `dest`'s place atomically.

    If `dest` exists and `replace` is true, the new folder and the old one are swapped in one
    `renameat2(RENAME_EXCHANGE)` and the old one is then deleted, so `dest` holds the old or the new
    folder at every instant. Without that call the old folder is moved aside for the instant between
    two renames, and `recover_dir` (run first by every `atomic_dir`) restores it if the writer is
    killed there. On any exception the temporary folder is deleted and `dest` is untouched.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=".part", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(is_dir=True))
        if not os.path.lexists(dest):
            _test_hook("before-swap", dest)
            os.rename(tmp, dest)
            _fsync_dir(parent)
            return
        if not replace:
            raise DestinationExists(f"{dest}: already exists; pass --force to replace it")
        _test_hook("before-swap", dest)
        if _exchange(tmp, dest):
            _fsync_dir(parent)
            _test_hook("after-swap", dest)
            _discard(tmp, parent, dest.name)       # tmp now holds the old folder
            return
        old = parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        _test_hook("after-aside", dest)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        _fsync_dir(parent)
        _test_hook("after-swap", dest)
        _discard(old, parent, dest.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
