"""Writing an output the way ``-o PATH`` promises: a regular file whole or not at all,
anything else as ``open(2)`` would.

- ``-`` is standard output.
- A symbolic link is followed, as ``open`` follows it: what it points to is written
  by these same rules (and created if it does not exist yet); the link stays a link.
- A device, FIFO or socket (``/dev/null``, ``/dev/stdout``, a pipe someone reads) is
  opened and written in place: it cannot be replaced, and renaming a file over it
  would destroy it.
- A directory is refused.
- A regular file, or a name that does not exist yet, is written to a temporary file
  beside it and renamed over it, so a reader never sees half of one and a failed run
  leaves nothing behind. A new file gets the mode ``open`` gives under the umask
  (0666 less the umask); a file that existed keeps its mode.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path


class OutputError(Exception):
    """An output file that cannot be written: one line naming it."""


#: The path that means standard output.
STDOUT = "-"


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be an output, or None: checked before a run, so a bad name
    costs nothing. (The write itself may still fail, and then says why.)"""
    if not path:
        return "the file name is empty"
    if path == STDOUT:
        return None
    target = Path(os.path.realpath(path))
    if target.is_dir():
        return f"{path} is a directory"
    if not target.exists() and not target.parent.is_dir():
        return f"directory {target.parent} does not exist"
    return None


def write_output(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` by the rules above."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path == STDOUT:
        out = sys.stdout.buffer
        out.write(raw)
        out.flush()
        return
    problem = output_problem(path)
    if problem is not None:
        raise OutputError(f"{path}: cannot write: {problem}")
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(path, target, raw)
    else:
        _replace(path, target, raw, None if st is None else stat.S_IMODE(st.st_mode))


def _write_in_place(path: str, target: str, raw: bytes) -> None:
    """A device, FIFO or socket: written as ``open(O_WRONLY)`` and ``write`` would."""
    try:
        fd = os.open(target, os.O_WRONLY)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None


def _replace(path: str, target: str, raw: bytes, keep_mode: int | None) -> None:
    """A regular file or a new name: a temporary file beside it, then a rename."""
    directory = os.path.dirname(target) or "."
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}")
    try:
        # 0666 like open(2): the kernel applies the umask to a new file's mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The name the callers know it by; every output goes through the same rules.
write_atomic = write_output
