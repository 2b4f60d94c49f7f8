"""The one seam through which every scheduling choice passes.

Wherever the engine has more than one way to go on (which of several pending steps
moves next when it runs untimed, which queued thread an idle CPU takes, which idle CPU
a woken thread goes to), it lists the options in its own order of preference and asks
the chooser for an index. With one option it does not ask: that is not a choice.

The timed scheduler uses ``FirstChooser`` (always the preferred option), so its runs are
fixed by config and seed. The interleaving explorer drives the same engine through
other choosers; ``RecordingChooser`` keeps what was picked and ``ScriptedChooser``
replays it exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# The kinds of choice point, as the engine names them.
EVENT = "event"  # untimed: which pending step happens next
RUNQ = "runq"  # which queued thread an idle CPU takes
PLACE = "place"  # which idle CPU a thread made runnable goes to


class Chooser(Protocol):
    """Picks one of ``options`` (at least two) at a choice point named ``point``."""

    def choose(self, point: str, options: Sequence[str]) -> int: ...


class FirstChooser:
    """The engine's default: always its preferred option."""

    def choose(self, point: str, options: Sequence[str]) -> int:
        return 0


class RandomChooser:
    """Uniformly random picks from its own seeded stream."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, point: str, options: Sequence[str]) -> int:
        return self.rng.randrange(len(options))


@dataclass(frozen=True, slots=True)
class Choice:
    """One recorded choice: where, among what, and which was taken."""

    point: str
    options: tuple[str, ...]
    index: int

    @property
    def label(self) -> str:
        return self.options[self.index]


class RecordingChooser:
    """Wraps another chooser and records every choice it makes."""

    def __init__(self, inner: Chooser | None = None) -> None:
        self.inner: Chooser = inner if inner is not None else FirstChooser()
        self.choices: list[Choice] = []

    def choose(self, point: str, options: Sequence[str]) -> int:
        i = self.inner.choose(point, options)
        self.choices.append(Choice(point, tuple(options), i))
        return i


class ScheduleMismatch(Exception):
    """A scripted schedule does not fit the run it is replayed on."""


class ScriptedChooser:
    """Replays a list of picks, given by option label, and refuses one that does not fit.

    Labels rather than indices make a schedule readable and make a wrong one fail at
    the first step that differs, with a plain sentence, as OSTEP's ``-P`` does.
    When the script runs out, ``then`` decides (the preferred option by default).
    """

    def __init__(self, labels: Sequence[str], then: Chooser | None = None) -> None:
        self.labels = list(labels)
        self.pos = 0
        self.then: Chooser = then if then is not None else FirstChooser()

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.labels)

    def choose(self, point: str, options: Sequence[str]) -> int:
        if self.exhausted:
            return self.then.choose(point, options)
        want = self.labels[self.pos]
        try:
            i = list(options).index(want)
        except ValueError:
            raise ScheduleMismatch(
                f"step {self.pos}: schedule says {want!r} but the choices at this "
                f"{point} point are {', '.join(options)}"
            ) from None
        self.pos += 1
        return i
