"""Progress bars on stderr for long commands: shown only when stderr is a terminal and
``--quiet`` was not given, so pipes, files and scripts see nothing; gone when done."""

from __future__ import annotations

import sys
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


@contextmanager
def bar(label: str, total: int | None, unit: str, show: bool) -> Iterator[Bar]:
    """A bar of ``total`` steps named ``unit`` (``None``: a count nobody knows ahead,
    shown as a moving bar); a no-op unless ``show``."""
    if not show:
        yield Bar()
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
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[note]}"))
    console = Console(file=sys.stderr)
    with Progress(*columns, console=console, transient=True) as progress:
        yield Bar(progress, progress.add_task(label, total=total, note=""))
