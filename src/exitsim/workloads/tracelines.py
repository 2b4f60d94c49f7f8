"""Reading a trace file line by line, with one rule for lines that cannot be parsed.

Strict (the default): the first bad line stops the import with ``FILE:LINE: what is
wrong``, so a truncated or mixed-up capture is never half-imported without notice.
Lenient: bad lines are skipped and counted, and the count is reported. A file whose
name ends in ``.gz`` is read through gzip.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

#: Linux's largest task id (PID_MAX_LIMIT on 64-bit, include/linux/threads.h): a larger
#: number in a trace is not a task.
MAX_TID = 1 << 22


def check_tid(tid: int, what: str) -> int:
    """``tid`` if it can be a Linux task id (1 to MAX_TID; 0 is the idle task, never a
    tree's), else LineError naming ``what``."""
    if not 1 <= tid <= MAX_TID:
        raise LineError(f"{what}: task ids are 1 to {MAX_TID} (got {tid})")
    return tid


class TraceError(ValueError):
    """A trace that cannot be imported: one line, naming the file (and line)."""


class LineError(Exception):
    """Raised by a line parser: what is wrong with the line (without its place)."""


class Lines:
    """The numbered non-blank lines of one file; ``bad`` applies the strict or
    lenient rule to a line a parser refused."""

    def __init__(self, path: str | Path, lenient: bool) -> None:
        self.path = str(path)
        self.lenient = lenient
        self.skipped = 0
        try:
            raw = Path(path).read_bytes()
            # A capture may be shipped gzipped (a build's full strace runs to megabytes).
            if self.path.endswith(".gz"):
                raw = gzip.decompress(raw)
            self.text = raw.decode("utf-8")
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise TraceError(f"{path}: not a whole gzip file ({e})") from None
        except OSError as e:
            raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise TraceError(f"{path}: not UTF-8 text") from None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for n, line in enumerate(self.text.splitlines(), 1):
            if line.strip():
                yield n, line.rstrip()

    def bad(self, lineno: int, why: str) -> None:
        """Refuse line ``lineno``: stop (strict) or count it (lenient)."""
        if not self.lenient:
            raise TraceError(f"{self.path}:{lineno}: {why}")
        self.skipped += 1

    def fail(self, why: str) -> TraceError:
        """An error about the file as a whole (no line to skip)."""
        return TraceError(f"{self.path}: {why}")
