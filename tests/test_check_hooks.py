"""exitsim check on a user's design whose hooks raise, and schedules in compact form.

An exception from the design's own code is a finding (exit 1, with the schedule that
reaches it, replayable with -P); an exception from exitsim's code stays an internal
error (exit 3). Schedules print as runs (``1*6,0``) and -P takes either form."""

from __future__ import annotations

import json
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitsim.check.run import search
from exitsim.check.scenarios import SCENARIOS
from exitsim.cli import main
from exitsim.engine.explore import format_schedule, parse_schedule
from exitsim.engine.thread import KPath
from exitsim.policies.registry import load_policy_file
from tests.clikit import assert_usage_error

MUTANTS = Path(__file__).parent / "mutants"

# Raises only where a sibling thread is not dead yet when the main thread, past the
# first op of its teardown, looks: some schedules, not the default one.
LATE = '''
from exitsim.engine.ops import SYS, Run
from exitsim.engine.thread import DEAD
from exitsim.policies.base import Policy


class SiblingsGone(Policy):
    """Assumes every sibling thread is dead once the teardown has begun."""

    name = "siblings-gone"

    def exit1_teardown(self, k, p):
        yield Run(100, SYS)
        for t in k.engine.threads:
            if t is not p and getattr(t, "p_p", None) is p.p_p and t.state != DEAD:
                raise ValueError(f"sibling {t.name} still alive at teardown")
'''

AT_ONCE = """
from exitsim.policies.base import Policy


class Refuses(Policy):
    name = "refuses"

    def exit1_teardown(self, k, p):
        raise ValueError("no teardown here")
        yield
"""

# The exception comes from the standard library; the hook's line that called it is blamed.
STDLIB = """
import json

from exitsim.policies.base import Policy


class ParsesJunk(Policy):
    name = "parses-junk"

    def exit1_teardown(self, k, p):
        json.loads("{junk")
        yield
"""

# Raises nothing: a design of the user's is installed, but exitsim's bugs stay exitsim's.
QUIET = """
from exitsim.engine.ops import SYS, Run
from exitsim.policies.base import Policy


class Quiet(Policy):
    name = "quiet"

    def exit1_teardown(self, k, p):
        yield Run(100, SYS)
"""

# A design with no reaper that does not say where dead threads go: the base class's
# default raises NotImplementedError, on the design's behalf.
NO_EXIT2 = """
from exitsim.policies.base import Policy


class Unfinished(Policy):
    name = "unfinished"
    uses_reaper = False
"""


def _file(tmp_path: Path, text: str, name: str = "my_policy.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _line_of(path: str, needle: str) -> int:
    lines = Path(path).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def _field(out: str, prefix: str) -> str:
    line = next(x for x in out.splitlines() if x.strip().startswith(prefix))
    return line.strip()[len(prefix) :].strip()


def test_a_hook_that_raises_on_some_schedule_is_a_finding_that_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _file(tmp_path, LATE)
    argv = ["check", "threads2", "--arch", "amd64", "--policy-file", f, "-q"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    where = f"{f}:{_line_of(f, 'raise ValueError')}"
    assert "threads2: VIOLATION" in out and "# policy siblings-gone" in out
    assert "ValueError: sibling t1 still alive at teardown" in out
    assert f"(in exit1_teardown, {where})" in out
    schedule = _field(out, "minimal schedule:")
    assert schedule and not schedule.startswith("(")  # not the default order
    assert f"--schedule '{schedule}'" in out
    violation = _field(out, "exception in design")

    assert main([*argv, "-P", schedule]) == 1
    again = capsys.readouterr().out
    assert f"# schedule {schedule}" in again
    assert _field(again, "violation:") == f"exception in design {violation}"


def test_the_finding_is_in_the_json_and_the_search_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _file(tmp_path, LATE)
    r = search(SCENARIOS["threads2"], lambda: load_policy_file(f), "amd64")
    assert r.violation is not None and r.invariant is None
    assert r.exception is not None
    assert r.exception["type"] == "ValueError"
    assert r.exception["file"] == f and r.exception["line"] == _line_of(f, "raise ValueError")
    assert r.exception["function"] == "exit1_teardown"
    assert main(["check", "threads2", "--arch", "amd64", "--policy-file", f, "--json"]) == 1
    [res] = json.loads(capsys.readouterr().out)
    assert res["exception"] == r.exception and res["schedule"] == r.schedule
    assert res["violation"] == r.violation


def test_a_hook_that_raises_at_once_fails_the_default_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _file(tmp_path, AT_ONCE)
    argv = ["check", "wait2", "--arch", "arm64", "--policy-file", f]
    assert main([*argv, "-q"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION after 1 schedules" in out
    assert "ValueError: no teardown here" in out
    assert f"{f}:{_line_of(f, 'raise ValueError')}" in out
    assert "--schedule ''" in out
    assert main([*argv, "-P", ""]) == 1
    assert "ValueError: no teardown here" in capsys.readouterr().out


def test_an_exception_from_the_standard_library_is_blamed_on_the_hook_line(
    tmp_path: Path,
) -> None:
    f = _file(tmp_path, STDLIB)
    r = search(SCENARIOS["threads2"], lambda: load_policy_file(f), "amd64")
    assert r.exception is not None and r.exception["type"] == "JSONDecodeError"
    assert r.exception["file"] == f and r.exception["line"] == _line_of(f, "json.loads")


def test_a_hook_the_design_left_to_the_base_class_is_blamed_on_the_design(
    tmp_path: Path,
) -> None:
    f = _file(tmp_path, NO_EXIT2)
    r = search(SCENARIOS["threads2"], lambda: load_policy_file(f), "amd64")
    assert r.exception is not None and r.exception["type"] == "NotImplementedError"
    assert r.exception["function"] == "exit2_without_reaper"


def test_an_exception_inside_exitsim_is_still_an_internal_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised below the engine (here a stand-in for a bug in it), not in the design's
    code: exit status 3 with the traceback, even with a user's design installed."""
    from exitsim.engine.sched import Engine

    def broken(self: Engine, *a: object) -> None:
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(Engine, "_thread_exit", broken)
    f = _file(tmp_path, QUIET)
    assert main(["check", "threads2", "--arch", "amd64", "--policy-file", f, "-q"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "RuntimeError: a bug in the engine" in err


def test_a_builtin_design_never_has_its_exceptions_turned_into_findings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exitsim.policies.base import Policy

    def broken(self: Policy, k: object, p: object) -> KPath:
        raise ValueError("a bug in a built-in design")
        yield

    monkeypatch.setattr(Policy, "exit1_teardown", broken)
    assert main(["check", "threads2", "--arch", "amd64", "--policy", "reaper", "-q"]) == 3
    assert "internal error" in capsys.readouterr().err


# -- schedules in compact form ------------------------------------------------------

LABELS = st.sampled_from(["0", "1", "2", "10", "i0.1", "i1.0", "a0.1", "a1.0", "t3"])


@given(st.lists(LABELS, max_size=80))
def test_compact_and_list_forms_round_trip(labels: list[str]) -> None:
    compact = format_schedule(labels)
    plain = format_schedule(labels, compact=False)
    assert parse_schedule(compact) == labels
    assert parse_schedule(plain) == labels
    assert format_schedule(parse_schedule(compact)) == compact
    assert len(compact) <= len(plain)
    items = [x.partition("*")[0] for x in compact.split(",")] if compact else []
    assert all(a != b for a, b in pairwise(items))  # runs are merged


def test_the_compact_form_of_a_late_switch() -> None:
    assert format_schedule(["1"] * 6 + ["0"]) == "1*6,0"
    assert format_schedule(["0", "i1.0", "i1.0", "a1.0"]) == "0,i1.0*2,a1.0"
    assert parse_schedule(" 1 * 6 , 0,0*1 ") == ["1"] * 6 + ["0", "0"]
    assert format_schedule([]) == "" and parse_schedule("") == []


def test_a_counterexample_prints_compact_and_replays_in_either_form(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """no-reaper's invariant 6 on wait2: its schedule, a long run of default steps and
    one choice, prints compact; that text, the list form and another compact spelling
    all replay the same violation."""
    argv = ["check", "wait2", "--policy", "no-reaper", "--arch", "amd64"]
    assert main([*argv, "-q"]) == 1
    out = capsys.readouterr().out
    assert _field(out, "minimal schedule:") == "1*160,0"
    violation = _field(out, "invariant 6:")
    for text in ("1*160,0", ",".join(["1"] * 160 + ["0"]), "1*80,1,1*79,0"):
        assert main([*argv, "-P", text]) == 1
        again = capsys.readouterr().out
        assert "# schedule 1*160,0" in again
        assert _field(again, "violation: invariant 6:") == violation


def test_the_list_form_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "wait2", "--policy", "no-reaper", "--arch", "amd64", "-q"]
    assert main([*argv, "--schedule-form", "list"]) == 1
    out = capsys.readouterr().out
    assert _field(out, "minimal schedule:") == ",".join(["1"] * 160 + ["0"])
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["schedule"] == "1*160,0"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0*0", "item 1, '0*0': the count after * must be a whole number of at least 1"),
        ("0,1*x", "item 2, '1*x': the count after *"),
        ("0**2", "the count after *"),
        ("*2", "item 1, '*2': no step before the *"),
        ("0,,1", "item 2 is empty"),
        ("1*6,0,", "item 3 is empty"),
        ("0,zz*2", "item 2, 'zz' is not a step"),
        ("0*999999999", "longer than 200000 steps"),
    ],
)
def test_bad_schedule_text_is_one_line_and_exit_status_2(
    text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(["check", "wait2", "-P", text], needle, capsys)
