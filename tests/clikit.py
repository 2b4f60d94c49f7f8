"""What every bad-input test of the command line asserts."""

from __future__ import annotations

import pytest

from exitsim.cli import main


def assert_usage_error(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``exitsim ARGV`` refuses with exit status 2 and one line naming ``needle``,
    without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
