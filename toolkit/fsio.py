"""Atomic writes that honour the umask: write a temporary file (or folder) beside the target, then rename it.

`tempfile.mkstemp` / `mkdtemp` create private entries (0600 / 0700), which is right for scratch space but
wrong for what clipkit hands to others: a head mounted into a container that runs as another user, a store
shared on a server, a report. So every temporary entry here is given the mode a plain `open()` / `mkdir()`
would have created (0666 / 0777 less the umask: 0644 / 0755 under the usual 022) before it is renamed into
place. A crash leaves the old target (or none) and at most a hidden `.NAME.*.tmp*` entry, never half a file.

    write_text(path, text)          write_bytes(path, data)
    save(path, lambda tmp: fig.savefig(tmp))      any writer that takes a path (keeps the suffix)
    with atomic_dir(folder) as tmp: ...           fill a folder, then swap it in whole

And what every file clipkit writes shares: CSV cells a spreadsheet won't run (`csv_safe`, `csv_writer`), file
names that are not UTF-8 written as valid UTF-8 (`printable`), one writer per output (`held_lock`), and a full
disk reported in one line (`reserve`, `space_errors` -> DiskFullError, exit code 5).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence


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


# ---------------------------------------------------------------- text that leaves clipkit: CSV cells, file names

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: what a spreadsheet may run as a formula


def csv_safe(cell: object) -> object:
    """A CSV cell that a spreadsheet shows as text: a string starting with = + - @ (or a tab or CR) gets a
    leading ' (OWASP's advice against CSV injection), unless it is a plain number (-0.5); other values pass
    unchanged. Every CSV clipkit writes
    for people (predictions, reports, audit and label files) goes through this; data files that clipkit
    reads back itself (a store's index.csv) stay lossless instead."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START) and not _is_number(cell):
        return "'" + cell
    return cell


def _is_number(text: str) -> bool:
    """A plain number like -0.5 or +3 (a spreadsheet reads it as a number, not a formula)."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text


class csv_writer:
    """csv.writer with "\\n" line ends and fields quoted where needed, a carriage return included (csv.writer
    leaves a lone CR unquoted when the line end is "\\n", and a reader then splits the row there). For files
    people open (`safe`, the default), every text cell also goes through `printable` (file names that are not
    UTF-8 come out as valid UTF-8 with \\xNN escapes) and `csv_safe` (no formulas); `safe=False` writes cells
    as they are, for data clipkit reads back (a store's index.csv). `csv_writer(f).writerow([...])`."""

    def __init__(self, f, safe: bool = True):
        import csv

        self._w = csv.writer(f, lineterminator="\n")
        self._quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.safe = safe

    def writerow(self, row: "Sequence[object]"):
        if self.safe:
            row = [csv_safe(printable(c)) if isinstance(c, str) else c for c in row]
        cr = any(isinstance(c, str) and "\r" in c for c in row)
        return (self._quoted if cr else self._w).writerow(row)

    def writerows(self, rows: "Iterable[Sequence[object]]") -> None:
        for row in rows:
            self.writerow(row)


def csv_text(rows: "Iterable[Sequence[object]]") -> str:
    """Rows as CSV text through `csv_writer`."""
    import io

    buf = io.StringIO()
    csv_writer(buf).writerows(rows)
    return buf.getvalue()


def printable(name: str) -> str:
    """`name` as valid UTF-8 text: bytes of a file name that are not UTF-8 (which Python holds as lone
    surrogates, U+DC80..U+DCFF) are written as \\xNN, as Python's backslashreplace does; anything else is
    unchanged. For output only: clipkit keeps the original name (os.fsencode(name) gives its bytes back)."""
    if not isinstance(name, str):
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "".join(_escape_surrogate(ch) for ch in name)


def _escape_surrogate(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode holds it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if 0xD800 <= code <= 0xDFFF else ch


# ---------------------------------------------------------------- one writer at a time

def lock_holder(lock: Path) -> "str | None":
    """Who holds `lock` ("PID" or "PID on HOST"), or None when it is stale: its process is gone (or it is
    this process's own pid, left by an earlier process with the same pid, as in a restarted container)."""
    import socket
    import time

    try:
        text = lock.read_text(encoding="utf-8").split()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return None
    if len(text) < 2 or not text[0].isdigit():  # torn: its writer died at once, or is writing it right now
        return "unknown" if age < 10 else None
    pid, host = int(text[0]), text[1]
    if host != socket.gethostname():  # another machine's process (shared disk): can't be checked from here
        return f"{pid} on {host}"
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return str(pid)


@contextlib.contextmanager
def held_lock(lock: str | Path, what: str) -> Iterator[None]:
    """Hold the lock file `lock` ("PID HOST") while the block runs; `what` names the thing it guards in the
    error ("store 'out'"). A lock of a live process raises DataError; a stale one (its process is gone, e.g.
    killed with -9) is taken over. The lock file is removed when the block ends, however it ends."""
    import socket

    from toolkit.errors import DataError

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is not None:
                raise DataError(f"{what} is being written by process {holder}; wait for it or remove "
                                f"{lock} if that process is gone") from None
            lock.unlink(missing_ok=True)  # stale
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        break
    else:
        raise DataError(f"{what} is being written by another process; wait for it or remove {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def sibling_lock(folder: str | Path) -> Path:
    """The lock file for a folder that is replaced whole (atomic_dir): beside it, `.NAME.lock`."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


# ---------------------------------------------------------------- full disks

NO_SPACE_ERRNOS = {28, 27, 122}  # ENOSPC, EFBIG (a file size limit), EDQUOT


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def reserve(path: str | Path, size: int, what: str) -> None:
    """Give file `path` `size` bytes of real disk blocks now (posix_fallocate), so that writing it later,
    through a memory map too, can't run out of space halfway (a memory-mapped write past the free space
    kills the process with SIGBUS). DiskFullError naming the folder and the space needed otherwise."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, int(size))
            except OSError as e:
                if e.errno in NO_SPACE_ERRNOS:
                    raise no_space(Path(path).parent, size, what) from None
                if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: a filesystem without fallocate
                    raise
    finally:
        os.close(fd)


def no_space(folder: str | Path, needed: "int | None", what: str):
    """The DiskFullError for `folder`: how much `what` needs and how much is free there."""
    from toolkit.errors import DiskFullError

    try:
        free = f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"needs {human_bytes(needed)}" if needed else "needs more space"
    return DiskFullError(f"not enough disk space in '{printable(str(folder))}': {what} {need} ({free}, or a "
                         "file size limit); free some space and run the same command again")


@contextlib.contextmanager
def space_errors(folder: str | Path, what: str, needed: "int | None" = None) -> Iterator[None]:
    """Turn an OSError of a full disk (ENOSPC, EFBIG, EDQUOT) raised in the block into one DiskFullError line."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise no_space(folder, needed, what) from None
        raise
