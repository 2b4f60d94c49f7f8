"""Progress on stderr for long commands. On a terminal, a bar, gone when done. When
stderr is a file or a pipe (a CI log, ``2>log``), a plain line now and then, the first
only after ``LINE_PERIOD_S`` seconds, so a short command writes nothing there and a
long one says it is alive. ``--quiet`` turns both off."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def wanted(quiet: bool) -> bool:
    """Whether to show progress: not asked to be quiet, and a person is watching."""
    return not quiet and sys.stderr.isatty()


class Bar:
    """One task's progress; does nothing when not shown."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        """Replace the text shown after the bar (what is being done now)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)


#: Seconds between two progress lines when stderr is not a terminal.
LINE_PERIOD_S = 10.0


class Lines(Bar):
    """Progress as a line on stderr at most every ``LINE_PERIOD_S`` seconds of the
    host's time: "compare: 12/40 runs, 35 s, 20.6 runs/min, about 80 s left"."""

    def __init__(self, label: str, total: int | None, unit: str) -> None:
        super().__init__()
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.text = ""
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._maybe_say()

    def note(self, text: str) -> None:
        self.text = text
        self._maybe_say()

    def _maybe_say(self) -> None:
        now = time.monotonic()
        if now - self.last < LINE_PERIOD_S:
            return
        self.last = now
        took = now - self.start
        parts = []
        if self.total is not None:
            parts.append(f"{self.done}/{self.total} {self.unit}")
        parts.append(f"{took:.0f} s")
        if self.total is not None and self.done:
            parts.append(f"{self.done / took * 60:,.1f} {self.unit}/min")
        if self.total and self.done:
            parts.append(f"about {took * (self.total - self.done) / self.done:.0f} s left")
        if self.text:
            parts.append(self.text)
        print(f"{self.label}: {', '.join(parts)}", file=sys.stderr, flush=True)


def _rate_column(unit: str) -> Any:
    """A bar's column: steps done per minute so far (blank until the first)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            took = task.elapsed or 0.0
            if not task.completed or not took:
                return Text("")
            return Text(f"{task.completed / took * 60:,.1f} {unit}/min")

    return Rate()


@contextmanager
def bar(label: str, total: int | None, unit: str, show: bool, lines: bool = False) -> Iterator[Bar]:
    """A bar of ``total`` steps named ``unit`` (``None``: a count nobody knows ahead,
    shown as a moving bar) when ``show``; else, with ``lines`` and stderr not a
    terminal, progress lines now and then; else nothing."""
    if not show:
        yield Lines(label, total, unit) if lines and not sys.stderr.isatty() else Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn | str] = [TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns += [MofNCompleteColumn(), TextColumn(unit)]
    columns.append(TimeElapsedColumn())
    if total is not None:
        columns += [_rate_column(unit), TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[note]}"))
    console = Console(file=sys.stderr)
    with Progress(*columns, console=console, transient=True) as progress:
        yield Bar(progress, progress.add_task(label, total=total, note=""))
