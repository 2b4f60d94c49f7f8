"""The state key sees what a callable carries: a closure's cells, a bound method's object."""

from __future__ import annotations

from collections.abc import Callable

from exitsim.check.statekey import state_key


class Holder:
    """Something in the run's graph that keeps a callable."""

    def __init__(self, hook: Callable[[], int]) -> None:
        self.hook = hook


def _counter(start: int) -> Callable[[], int]:
    box = [start]

    def hook() -> int:
        box[0] += 1
        return box[0]

    return hook


class Policyish:
    def __init__(self, n: int) -> None:
        self.n = n

    def hook(self) -> int:
        return self.n


def test_a_count_in_a_closure_cell_is_state() -> None:
    a, b = Holder(_counter(0)), Holder(_counter(0))
    assert state_key(a, 0) == state_key(b, 0)
    b.hook()
    assert state_key(a, 0) != state_key(b, 0)
    a.hook()
    assert state_key(a, 0) == state_key(b, 0)


def test_a_bound_methods_object_is_state() -> None:
    a, b = Holder(Policyish(1).hook), Holder(Policyish(1).hook)
    assert state_key(a, 0) == state_key(b, 0)
    b.hook.__self__.n = 2  # type: ignore[attr-defined]
    assert state_key(a, 0) != state_key(b, 0)
