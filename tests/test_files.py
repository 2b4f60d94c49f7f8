"""Outputs are written as ``-o PATH`` promises (report/files.py), with real files,
links, a FIFO, /dev/null and standard output: a regular file replaced whole with the
mode open(2) gives, a link written through, a device or FIFO written in place, ``-``
on standard output, a directory refused."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.report.files import OutputError, output_problem, write_output

RUN = ["run", "--cpus", "2", "--param", "jobs=2", "--quiet"]


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_mode_open_gives_under_the_umask(tmp_path: Path) -> None:
    for mask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            out = tmp_path / f"new-{mask:o}.json"
            write_output(str(out), "x")
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == want
        assert out.read_text() == "x"


def test_an_existing_file_is_replaced_whole_and_keeps_its_mode(tmp_path: Path, umask: None) -> None:
    out = tmp_path / "r.json"
    out.write_text("old, and longer than the new text")
    out.chmod(0o640)
    before = out.stat().st_ino
    write_output(str(out), "new")
    assert out.read_text() == "new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert out.stat().st_ino != before  # a rename, not a rewrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_output(str(link), "new")
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_text() == "new"


def test_a_dangling_symlink_creates_its_target(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "made.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_output(str(link), "made")
    assert link.is_symlink() and target.read_text() == "made"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_dev_null_stays_a_device() -> None:
    write_output("/dev/null", "nothing")
    st = os.stat("/dev/null")
    assert stat.S_ISCHR(st.st_mode)


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader)
    t.start()
    write_output(str(fifo), "through the pipe")
    t.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_dash_is_standard_output(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_output("-", "to stdout\n")
    assert capfd.readouterr().out == "to stdout\n"
    assert not (tmp_path / "-").exists()


def test_a_directory_or_an_empty_name_is_refused(tmp_path: Path) -> None:
    assert output_problem(str(tmp_path)) == f"{tmp_path} is a directory"
    assert output_problem("") == "the file name is empty"
    assert "does not exist" in (output_problem(str(tmp_path / "no" / "x.json")) or "")
    link = tmp_path / "to-dir"
    link.symlink_to(tmp_path)
    assert output_problem(str(link)) is not None
    with pytest.raises(OutputError, match="is a directory"):
        write_output(str(tmp_path), "x")


# -- through the command line --------------------------------------------------------


def test_run_o_dev_null_leaves_dev_null_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*RUN, "-o", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_run_o_dash_prints_the_json_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*RUN, "-o", "-"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["config"]["cpus"] == 2  # the JSON alone, once
    assert not (tmp_path / "-").exists()


def test_run_o_a_directory_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([*RUN, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory" in err[0]


def test_run_o_through_a_symlink_keeps_the_link(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, umask: None
) -> None:
    target = tmp_path / "r.json"
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert main([*RUN, "-o", str(link)]) == 0
    assert link.is_symlink()
    assert json.loads(target.read_text())["config"]["cpus"] == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
