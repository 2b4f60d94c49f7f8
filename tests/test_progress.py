"""Progress on stderr: a bar when stderr is a terminal, nothing with --quiet or when
stderr is not a terminal (a pipe or a file), and the same stdout either way."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from exitsim.cli import main

SMALL = ["--param", "jobs=2", "--param", "cc1_user_ms=2"]
# One worker: the same bar as with a process pool, without the pool's start-up time.
COMPARE = ["compare", "--policies", "reaper,purge", "--arches", "amd64", "--cpus", "2"]
COMMANDS = {
    "run": (["run", "--cpus", "2", *SMALL], "simulating"),
    "compare": ([*COMPARE, "--workers", "1", *SMALL], "compare"),
    "check": (["check", "wait2", "--preemptions", "0"], "check"),
}


def _as_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the captured stderr say it is a terminal, as a person's would."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_terminal_gets_a_progress_bar_that_quiet_turns_off(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, label = COMMANDS[command]
    _as_terminal(monkeypatch)
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert label in shown.err
    assert "━" in shown.err  # the bar itself

    _as_terminal(monkeypatch)
    assert main([*argv, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert _no_clock(quiet.out) == _no_clock(shown.out)


def _no_clock(text: str) -> str:
    """Output less the host's own elapsed time (check reports how long it searched)."""
    return re.sub(r"\b\d+(\.\d+)? s\b", "_ s", text)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_stderr_that_is_not_a_terminal_gets_nothing(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, _ = COMMANDS[command]
    assert not sys.stderr.isatty()
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


def test_json_output_gets_no_bar_even_in_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _as_terminal(monkeypatch)
    assert main([*COMMANDS["run"][0], "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_run_with_a_bar_gives_the_same_result_as_without(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bar makes the engine stop now and then to report: nothing else changes."""
    argv, _ = COMMANDS["run"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    _as_terminal(monkeypatch)
    assert main(argv) == 0
    assert capsys.readouterr().out == plain


def test_a_real_pipe_gets_nothing_on_stderr() -> None:
    """As a shell pipeline or a script runs it: stderr is a pipe, not a terminal."""
    argv, _ = COMMANDS["run"]
    done = subprocess.run(
        [sys.executable, "-m", "exitsim.cli", *argv], capture_output=True, timeout=120
    )
    assert done.returncode == 0
    assert done.stderr == b""
    assert done.stdout.startswith(b"# policy ")
