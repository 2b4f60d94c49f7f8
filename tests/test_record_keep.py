"""exitsim record --keep: the raw captures and the run's measurement are kept beside
the imported workload."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.workloads.importer import import_trace
from exitsim.workloads.strace import Call, exec_path, read_strace
from tests.clikit import assert_usage_error

COMMAND = ["sh", "-c", "true; true"]
ZLIB = Path(__file__).parents[1] / "data" / "captures" / "zlib-make-j2"


def test_keep_writes_the_strace_and_the_rusage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shutil.which("strace"), "strace is required (make installs it)"
    keep = tmp_path / "kept"  # made by record
    out = tmp_path / "sh.toml"
    argv = ["record", "--keep", str(keep), "--name", "tiny", "-o", str(out), "--", *COMMAND]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"kept: {keep / 'tiny.strace'}" in printed and out.is_file()
    cap = read_strace(keep / "tiny.strace")
    first = cap.events[0]
    assert isinstance(first, Call) and first.name == "execve"
    assert exec_path(first) == shutil.which("sh")
    data = json.loads((keep / "tiny.rusage.json").read_text())
    assert data["command"] == COMMAND and data["status"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["date"])
    assert data["machine"]["kernel"] == os.uname().release
    assert data["machine"]["nproc"] == len(os.sched_getaffinity(0))
    assert data["machine"]["cpu"]
    assert data["wall_ns"] > 0 and data["ru_maxrss_kib"] > 0
    # strace's own time is in it: something, however short the command.
    assert data["ru_utime_ns"] + data["ru_stime_ns"] > 0
    assert isinstance(data["load1_before"], float) and data["load1_before"] >= 0
    assert "strace" in data["what"]["ru_utime_ns, ru_stime_ns"]
    assert data["bpftrace"] is (keep / "tiny.bpftrace.txt").is_file()
    # The layout is fixed: sorted keys, two-space indent, a final newline.
    text = (keep / "tiny.rusage.json").read_text()
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    # The shipped zlib capture was written by this same code.
    shipped = json.loads((ZLIB / "zlib-make-j2.rusage.json").read_text())
    assert shipped.keys() == data.keys() and shipped["what"] == data["what"]
    assert shipped["command"] == ["make", "-j2"] and shipped["bpftrace"] is True


def test_the_shipped_zlib_capture_imports_as_its_readme_says() -> None:
    result = import_trace(ZLIB / "zlib-make-j2.strace", ZLIB / "zlib-make-j2.bpftrace.txt")
    procs = result.spec.process or []
    assert len(procs) == 177
    comms = Counter(p.comm for p in procs)
    assert (comms["cc1"], comms["as"], comms["gcc"], comms["ld"]) == (34, 34, 41, 7)
    assert all(p.file_pages + p.anon_pages > 0 for p in procs)


def test_keep_reports_a_failing_command_status(tmp_path: Path) -> None:
    argv = ["record", "--keep", str(tmp_path), "-o", str(tmp_path / "x.toml")]
    assert main([*argv, "--", "sh", "-c", "exit 3"]) == 0
    data = json.loads((tmp_path / "sh.rusage.json").read_text())
    assert data["status"] == 3 and data["command"] == ["sh", "-c", "exit 3"]


def test_keep_refuses_a_bad_directory_or_name_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    cmd = ["--", "sh", "-c", f"touch {marker}"]
    afile = tmp_path / "afile"
    afile.write_text("")
    out = str(tmp_path / "x.toml")
    assert_usage_error(
        ["record", "--keep", str(afile), "-o", out, *cmd], "is not a directory", capsys
    )
    missing = tmp_path / "no" / "such"
    assert_usage_error(
        ["record", "--keep", str(missing), "-o", out, *cmd], "does not exist", capsys
    )
    assert_usage_error(
        ["record", "--keep", str(tmp_path), "--name", "a/b", "-o", out, *cmd],
        "cannot name files",
        capsys,
    )
    assert not marker.exists() and not Path(out).exists()


def test_keep_keeps_the_bpftrace_capture(
    tmp_path: Path, tracefs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shutil.which("bpftrace"), "bpftrace is required (make installs it)"
    argv = ["record", "--keep", str(tmp_path), "-o", str(tmp_path / "x.toml")]
    assert main([*argv, "--", "sh", "-c", "ls >/dev/null; true"]) == 0
    assert "bpftrace" not in capsys.readouterr().err
    bt = (tmp_path / "sh.bpftrace.txt").read_text()
    assert "Attaching" in bt and re.search(r"^X \d+ \d+ \d+ ls ", bt, re.M)
    assert json.loads((tmp_path / "sh.rusage.json").read_text())["bpftrace"] is True
