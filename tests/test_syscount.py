"""exitsim trace syscalls: per-process counts and the model's names on a hand-written
capture, the shipped counts of a real C build, and their regeneration from the shipped
Lua capture."""

from __future__ import annotations

import gzip
import json
import shutil
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.workloads.strace import Call
from exitsim.workloads.syscount import (
    MODEL_CALLS,
    count,
    model_name,
    per_program,
    read_summary,
    syscalls_toml,
)
from exitsim.workloads.tracelines import TraceError
from tests.clikit import assert_usage_error

DATA = Path(__file__).parent / "data" / "syscount"
SMALL = DATA / "small.strace"
SMALL_C = DATA / "small.strace-c"
LUA_DIR = Path(__file__).parents[1] / "data" / "captures" / "lua-syscalls"


def call(name: str, args: str) -> Call:
    return Call(1, name, args, 0, 1, 0, 1, 0)


def test_each_process_counts_its_calls_and_is_named_by_its_last_exec() -> None:
    procs, head = count(SMALL)
    by_pid = {p.pid: p for p in procs}
    # 105 is a thread of 103 (clone3 with CLONE_THREAD): not a process of its own.
    assert sorted(by_pid) == [100, 101, 102, 103, 104, 106, 107]
    assert {p.pid: p.program for p in procs} == {
        100: "make",
        101: "gcc",  # after a failed exec of /home/u/bin/gcc
        102: "cc1",
        103: "as",
        104: "cc1",
        106: "cc1",
        107: "make",  # forked, never exec'd: its parent's program
    }
    gcc = by_pid[101]
    assert gcc.calls["execve"] == 2 and gcc.calls["vfork"] == 2 and gcc.calls["wait4"] == 2
    assert gcc.model == {"access": 2}
    cc1 = by_pid[102]
    assert dict(cc1.model) == {
        "open": 3,
        "stat": 2,  # statx on AT_FDCWD, newfstatat on an absolute path
        "fstatat": 1,  # newfstatat relative to descriptor 4
        "readlink": 2,
        "getdents": 1,
        "read": 1,  # split in two lines, counted once
        "write": 3,  # write, writev, pwrite64
        "close": 1,
        "mmap": 1,
        "munmap": 1,
        "mprotect": 1,
        "brk": 1,
    }
    # The thread's open, read and close count for as.
    assert dict(by_pid[103].model) == {"open": 1, "read": 1, "close": 1, "write": 1}
    assert by_pid[103].calls["exit"] == 1
    # newfstatat on "" with AT_EMPTY_PATH is an fstat; on AT_FDCWD, a stat.
    assert dict(by_pid[100].model) == {
        "brk": 1,
        "open": 1,
        "fstat": 1,
        "read": 2,
        "close": 1,
        "stat": 2,
    }
    assert (head.file, head.command, head.date, head.machine) == (
        "small.strace",
        "make -j2",
        "2023-11-14T22:13:20Z",
        "not recorded",
    )


@pytest.mark.parametrize(
    ("name", "args", "model"),
    [
        ("openat", 'AT_FDCWD, "a", O_RDONLY', "open"),
        ("open", '"a", O_RDONLY', "open"),
        ("stat", '"a", 0x1', "stat"),
        ("lstat", '"a", 0x1', "stat"),
        ("newfstatat", 'AT_FDCWD, "a", 0x1, 0', "stat"),
        ("newfstatat", 'AT_FDCWD, "a", 0x1, AT_SYMLINK_NOFOLLOW', "stat"),
        ("newfstatat", '3, "", {st_mode=S_IFREG|0644, ...}, AT_EMPTY_PATH', "fstat"),
        ("newfstatat", '3, "b/c", 0x1, 0', "fstatat"),
        ("newfstatat", '3, "/b/c", 0x1, 0', "stat"),
        ("statx", 'AT_FDCWD, "a", AT_STATX_SYNC_AS_STAT, STATX_ALL, 0x1', "stat"),
        ("statx", '4, "", AT_EMPTY_PATH, STATX_ALL, 0x1', "fstat"),
        ("fstat", "3, 0x1", "fstat"),
        ("faccessat2", 'AT_FDCWD, "a", X_OK, AT_EACCESS', "access"),
        ("readlinkat", 'AT_FDCWD, "a", 0x1, 1023', "readlink"),
        ("getdents64", "3, 0x1 /* 2 entries */, 32768", "getdents"),
        ("pread64", '3, "x", 1, 0', "read"),
        ("pwrite64", '3, "x", 1, 0', "write"),
        ("close", "3", "close"),
        ("brk", "NULL", "brk"),
        ("mmap", "NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0", "mmap"),
        ("lseek", "3, 0, SEEK_SET", None),
        ("rt_sigaction", "SIGINT, NULL, 0x1, 8", None),
    ],
)
def test_linux_calls_map_to_the_models_names(name: str, args: str, model: str | None) -> None:
    assert model_name(call(name, args)) == model


def test_programs_get_the_median_and_mean_per_process() -> None:
    procs, _ = count(SMALL)
    progs = per_program(procs)
    assert list(progs) == ["as", "cc1", "gcc", "make"]
    cc1 = progs["cc1"]
    assert cc1["processes"] == 3
    # opens per cc1: 3, 1 and 8; reads 1, 1 and 6.
    assert (cc1["model"]["open"], cc1["model_mean"]["open"]) == (3, 4)
    assert (cc1["model"]["read"], cc1["model_mean"]["read"]) == (1, 2.67)
    assert (cc1["calls"]["openat"], cc1["mean"]["openat"]) == (3, 4)
    assert list(cc1["model"]) == list(MODEL_CALLS)
    make = progs["make"]
    assert make["processes"] == 2
    assert (make["model"]["open"], make["memory"]["brk"]) == (0.5, 0.5)


def test_the_summary_table_checks_the_totals(tmp_path: Path) -> None:
    assert read_summary(SMALL_C) == {"openat": 20, "read": 10, "rt_sigaction": 4, "execve": 4}
    out = tmp_path / "s.toml"
    assert main(["trace", "syscalls", str(SMALL), "--summary", str(SMALL_C), "-o", str(out)]) == 0
    data = tomllib.loads(out.read_text())
    s = data["summary"]
    assert (s["calls"], s["calls_of_traced_names"], s["share_of_traced_names"]) == (38, 34, 0.8947)
    assert s["this_capture"]["openat"] == 14 and s["summary_table"]["openat"] == 20
    assert data["capture"]["processes"] == 7 and data["capture"]["calls"] == 75


def test_a_rusage_file_beside_the_capture_gives_the_header(tmp_path: Path) -> None:
    shutil.copy(SMALL, tmp_path / "b.strace")
    (tmp_path / "b.rusage.json").write_text(
        json.dumps(
            {
                "command": ["make", "-j8", "all"],
                "date": "2024-01-02T03:04:05Z",
                "machine": {"kernel": "6.1.0", "cpu": "Some CPU", "nproc": 8},
            }
        )
    )
    data = tomllib.loads(syscalls_toml(tmp_path / "b.strace"))
    assert data["capture"] == {
        "file": "b.strace",
        "command": "make -j8 all",
        "date": "2024-01-02T03:04:05Z",
        "machine": "Linux 6.1.0, Some CPU, 8 CPUs",
        "processes": 7,
        "calls": 75,
    }
    (tmp_path / "b.rusage.json").write_text("{}")
    with pytest.raises(TraceError, match=r"b\.rusage\.json: not a rusage file"):
        syscalls_toml(tmp_path / "b.strace")


def test_a_gzipped_capture_reads_the_same(tmp_path: Path) -> None:
    gz = tmp_path / "small.strace.gz"
    gz.write_bytes(gzip.compress(SMALL.read_bytes()))
    plain = syscalls_toml(SMALL).replace('file = "small.strace"', 'file = "small.strace.gz"')
    assert syscalls_toml(gz) == plain
    # Same input, same bytes.
    assert syscalls_toml(gz) == syscalls_toml(gz)


def test_the_shipped_counts_load_and_have_the_compilers_programs() -> None:
    text = resources.files("exitsim.workloads").joinpath("data", "c-build-syscalls.toml")
    data = tomllib.loads(text.read_text())
    progs = data["programs"]
    for prog in ("gcc", "cc1", "as"):
        assert progs[prog]["processes"] >= 34
        model = progs[prog]["model"]
        assert model["open"] > 0 and model["read"] > 0 and model["close"] > 0, prog
    assert progs["cc1"]["model"]["readlink"] > 0
    assert data["capture"]["processes"] == sum(p["processes"] for p in progs.values())


def test_trace_syscalls_on_the_shipped_lua_capture_gives_the_shipped_counts(
    tmp_path: Path,
) -> None:
    shipped = resources.files("exitsim.workloads").joinpath("data", "c-build-syscalls.toml")
    text = shipped.read_text()
    machine = tomllib.loads(text)["capture"]["machine"]
    out = tmp_path / "c.toml"
    argv = ["trace", "syscalls", str(LUA_DIR / "lua.strace.gz")]
    argv += ["--summary", str(LUA_DIR / "lua.strace-c"), "--machine", machine, "-o", str(out)]
    assert main(argv) == 0
    assert out.read_text() == text


def test_bad_input_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.toml"
    bad = tmp_path / "bad.strace"
    lines = SMALL.read_text().splitlines()
    lines[2] = "100 1700000000.000300 this is not a call"
    bad.write_text("\n".join(lines) + "\n")
    assert_usage_error(["trace", "syscalls", str(bad), "-o", str(out)], f"{bad}:3:", capsys)
    cut = tmp_path / "cut.strace.gz"
    cut.write_bytes(gzip.compress(SMALL.read_bytes())[:200])
    assert_usage_error(["trace", "syscalls", str(cut)], "not a whole gzip file", capsys)
    table = tmp_path / "bad.strace-c"
    rows = SMALL_C.read_text().splitlines()
    rows[3] = rows[3].replace("10", "xx", 1)
    table.write_text("\n".join(rows) + "\n")
    argv = ["trace", "syscalls", str(SMALL), "--summary", str(table), "-o", str(out)]
    assert_usage_error(argv, f"{table}:4:", capsys)
    table.write_text(SMALL_C.read_text().replace(" 38 ", " 39 "))
    assert_usage_error(argv, "the total row says 39", capsys)
    assert_usage_error(["trace", "syscalls", str(SMALL_C)], f"{SMALL_C}:1:", capsys)
    assert_usage_error(
        ["trace", "syscalls", str(SMALL), "-o", str(SMALL)], "is an input file", capsys
    )
    assert not out.exists()
