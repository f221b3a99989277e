"""Atomic writes that honour the umask: write a temporary file (or folder) beside the target, then rename it.

`tempfile.mkstemp` / `mkdtemp` create private entries (0600 / 0700), which is right for scratch space but
wrong for what clipkit hands to others: a head mounted into a container that runs as another user, a store
shared on a server, a report. So every temporary entry here is given the mode a plain `open()` / `mkdir()`
would have created (0666 / 0777 less the umask: 0644 / 0755 under the usual 022) before it is renamed into
place. A crash leaves the old target (or none) and at most a hidden `.NAME.*.tmp*` entry, never half a file.

    write_text(path, text)          write_bytes(path, data)
    save(path, lambda tmp: fig.savefig(tmp))      any writer that takes a path (keeps the suffix)
    with atomic_dir(folder) as tmp: ...           fill a folder, then swap it in whole
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it in /proc (no window in which
    another thread would create files with a different mask); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode mkdir() gives a new folder: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def _temp_file(path: Path) -> Path:
    """An empty, uniquely named temporary file beside `path`, ending in `path`'s suffix (so that writers
    choosing the format by extension, like savefig or np.save, pick the same one)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` with a temporary path beside `path`, then make it durable, give it the umask's mode
    and rename it over `path`. If `write` raises, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = _temp_file(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (readable by others as the umask allows)."""
    return save(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically; newlines are written as given (no translation)."""
    return write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block ends without error, it replaces `path`
    (an existing one is moved aside first and removed after). On error it is removed and `path` is untouched.

        with atomic_dir(out) as tmp:
            (tmp / "head.json").write_text(doc)   # plain writes inside: the folder appears complete or not at all
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove once it was swapped in


def swap_in(src: Path, dst: Path) -> None:
    """Rename folder `src` to `dst`. An existing `dst` (folder or file) is renamed aside first and removed
    only once `src` is in place; if that rename fails, the old `dst` is put back."""
    src, dst = Path(src), Path(dst)
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
