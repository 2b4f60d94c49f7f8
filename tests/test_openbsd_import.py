"""OpenBSD captures: kdump text of a ``ktrace -i`` build becomes the same kind of
process tree an strace capture does, btrace's lines give teardown times and fault
counts, and ``exitsim trace btrace-script`` prints what the reader reads."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.workloads.btrace import (
    PROBES,
    SCRIPT,
    ExitLine,
    Mark,
    btrace_script,
    parse_line,
    read_btrace,
)
from exitsim.workloads.importer import DEFAULT_ANON_PAGES, DEFAULT_FILE_PAGES, import_trace
from exitsim.workloads.kdump import REUSE_STRIDE, read_kdump, unvis
from exitsim.workloads.spec import MAX_ANON_PAGES, ProcessSpec, dump_workload, load_workload_file
from exitsim.workloads.tracelines import TraceError
from tests.clikit import assert_usage_error

DATA = Path(__file__).parent / "data" / "openbsd"
KDUMP = DATA / "make-j2.kdump"
BTRACE = DATA / "make-j2.btrace"
T0 = 1767225600 * 10**9  # the samples' times start at 2026-01-01 00:00:00 UTC
MS = 1_000_000


def procs(path: Path = KDUMP, bt: Path | None = None) -> dict[int, ProcessSpec]:
    spec = import_trace(path, btrace_path=bt).spec
    assert spec.process is not None
    return {p.id: p for p in spec.process}


# kdump -----------------------------------------------------------------------------


def test_the_make_sample_is_make_two_compiles_and_a_link() -> None:
    cap = read_kdump(KDUMP)
    assert (cap.root, cap.clock, cap.skipped, cap.notes) == (40001, "realtime", 0, [])
    rows = cap.processes
    tree = {i: (t.parent, t.program, t.comm) for i, t in rows.items()}
    assert tree == {
        40001: (None, "/usr/bin/make", "make"),
        40002: (40001, "/bin/sh", "sh"),
        40003: (40001, "/bin/sh", "sh"),
        40004: (40002, "/usr/bin/cc", "cc"),
        40005: (40003, "/usr/bin/cc", "cc"),
        40007: (40001, "/bin/sh", "sh"),
        40008: (40007, "/usr/bin/cc", "cc"),
        40009: (40008, "/usr/bin/ld", "ld"),
    }
    # The failed PATH probe is passed over; argv comes from the ARGS records.
    assert rows[40001].argv == ["make", "-j2"]
    assert rows[40004].argv == ["cc", "-O2", "-c", "a.c"]
    assert rows[40009].argv == ["ld", "-o", "prog", "a.o", "b.o", "-lc"]
    # ld's __tfork made a second thread; every other process has one.
    assert {i: len(t.tids) for i, t in rows.items() if len(t.tids) > 1} == {40009: 2}
    assert rows[40009].tids == {109925, 173355}
    # Births are the fork calls; deaths the exit calls.
    assert rows[40003].birth == T0 + 2_500_000 and rows[40003].death == T0 + 148 * MS
    assert rows[40001].birth == T0 + 100_000 and rows[40001].death == T0 + 400_100_000
    assert all(t.exit_status == 0 for t in rows.values())
    assert [c for _, c in rows[40001].reaps] == [40002, 40003, 40007]
    assert [c for _, c in rows[40001].forks] == [40002, 40003, 40007]


def test_sleeps_are_waits_sigchld_interrupted_calls_and_vfork() -> None:
    rows = read_kdump(KDUMP).processes
    # make sleeps in sigsuspend until each SIGCHLD; its WNOHANG polls are run time.
    assert rows[40001].blocked == [
        (T0 + 2_990_000, T0 + 120_010_000),
        (T0 + 120_060_000, T0 + 150_010_000),
        (T0 + 150_400_000, T0 + 400_010_000),
    ]
    # sh waits in wait4 for cc, and sleeps in vfork until cc's exec returns (3.4 ms),
    # before its own RET vfork (3.45 ms).
    assert sorted(rows[40002].blocked) == [
        (T0 + 3_000_000, T0 + 3_400_000),
        (T0 + 3_500_000, T0 + 118_000_000),
    ]


def test_import_reuses_the_strace_path_order_start_after_and_user_time() -> None:
    r = import_trace(KDUMP)
    assert r.warnings == []
    assert r.summary() == "8 processes, 4 programs, span 400.0 ms, user time 466.2 ms"
    p = procs()
    assert list(p) == [40001, 40002, 40003, 40004, 40005, 40007, 40008, 40009]
    # 400.0 ms alive less 117.02 + 29.95 + 249.61 ms in sigsuspend.
    assert p[40001].user_ms == pytest.approx(3.42)
    # The link starts after make reaped both compiles.
    assert p[40007].after == [40002, 40003]
    assert p[40002].after == [] and p[40003].after == []
    # make forked job b 2.4 ms into its run (it had not slept yet).
    assert p[40003].start_ms == pytest.approx(2.4)
    assert p[40009].threads == 2 and p[40004].threads == 1
    assert {(x.file_pages, x.anon_pages) for x in p.values()} == {
        (DEFAULT_FILE_PAGES, DEFAULT_ANON_PAGES)
    }
    assert r.spec.name == "make-j2" and r.spec.source == "kdump make-j2.kdump"
    assert "`make -j2`" in r.spec.description
    assert "No btrace capture" in r.spec.description


def test_relative_and_elapsed_times_give_the_same_tree(tmp_path: Path) -> None:
    """kdump -R prints the time since the record before (the first one absolute),
    -TR the time since the first record."""
    text = KDUMP.read_text()
    stamps = [int(s) * 10**9 + int(f) * 1000 for s, f in re.findall(r" (\d{10})\.(\d{6}) ", text)]
    rel = iter([stamps[0], *(b - a for a, b in pairwise(stamps))])
    ela = iter([t - stamps[0] for t in stamps])

    def stamp(ns: int) -> str:
        return f" {ns // 10**9}.{ns % 10**9 // 1000:06d} "

    relative = tmp_path / "rel.kdump"
    relative.write_text(re.sub(r" \d{10}\.\d{6} ", lambda _: stamp(next(rel)), text))
    elapsed = tmp_path / "ela.kdump"
    elapsed.write_text(re.sub(r" \d{10}\.\d{6} ", lambda _: stamp(next(ela)), text))
    assert read_kdump(relative).clock == "realtime"
    assert read_kdump(elapsed).clock == "elapsed"
    want = import_trace(KDUMP).spec.process
    assert import_trace(relative).spec.process == want
    assert import_trace(elapsed).spec.process == want


def test_killed_children_exit_with_128_plus_the_openbsd_signal() -> None:
    p = procs(DATA / "killed.kdump")
    sh, crash, sleep = p[50001], p[50002], p[50003]
    assert (sh.exit_status, crash.exit_status, sleep.exit_status) == (1, 128 + 11, 128 + 9)
    assert crash.program == "./crash" and sleep.comm == "sleep"
    # sleep's nanosleep never returned; it ends at its last line.
    rows = read_kdump(DATA / "killed.kdump").processes
    assert rows[50003].death == 1767225700 * 10**9 + 1_500_000
    assert rows[50002].death == 1767225700 * 10**9 + 2_000_000


def test_a_reused_pid_is_a_second_process_with_its_own_id() -> None:
    cap = read_kdump(DATA / "reuse.kdump")
    again = 60002 + REUSE_STRIDE
    assert list(cap.processes) == [60001, 60002, 60003, again]
    assert cap.pids[again] == 60002
    assert cap.processes[again].program == "/usr/bin/true"
    assert any("1 pid reused" in n for n in cap.notes)
    p = procs(DATA / "reuse.kdump")
    assert (p[60002].program, p[60003].exit_status) == (None, 2)
    assert p[60003].after == [60002] and p[again].after == []


def test_without_thread_ids_a_threaded_process_is_noted(tmp_path: Path) -> None:
    bare = tmp_path / "bare.kdump"
    bare.write_text(re.sub(r"^(\s*\d+)/\d+ *", r"\1 ", KDUMP.read_text(), flags=re.M))
    cap = read_kdump(bare)
    assert cap.processes[40009].tids == {40009, 173355}
    assert any("no thread ids, yet 1 threaded processes" in n for n in cap.notes)


def test_vis_escapes_and_a_wrapped_path_are_decoded(tmp_path: Path) -> None:
    assert unvis(r"a\"b\\c\tq\040\^A\M-a") == 'a"b\\c\tq \x01\\xe1'
    # kdump goes on with a path too wide for the screen after a backslash, on a line
    # of its own that starts with a tab.
    f = tmp_path / "wrap.kdump"
    f.write_text(
        " 40001/152301  make     1767225600.000100 CALL  execve(0x1,0x2,0x3)\n"
        ' 40001/152301  make     1767225600.000200 NAMI  "/usr/local/libexec/some/rathe\\\n'
        '\tr/deeply/nested/directory/tool"\n'
        " 40001/152301  make     1767225600.000250 ARGS\n"
        '\t[0] = "tool"\n'
        '\t[1] = "--a-long-option=with-a-long-value,and-another-one,and-\\\n'
        '\tyet-one-more"\n'
        " 40001/152301  tool     1767225600.000300 RET   execve JUSTRETURN\n"
    )
    tool = read_kdump(f).processes[40001]
    assert tool.program == "/usr/local/libexec/some/rather/deeply/nested/directory/tool"
    assert tool.argv == [
        "tool",
        "--a-long-option=with-a-long-value,and-another-one,and-yet-one-more",
    ]
    # The sample has one such line too.
    assert "rathe\\\n\tr/deeply" in KDUMP.read_text()
    assert read_kdump(KDUMP).skipped == 0


# btrace ----------------------------------------------------------------------------


def test_btrace_teardown_times_and_fault_counts() -> None:
    cap = read_btrace(BTRACE)
    assert (cap.variant, cap.counts_faults, cap.skipped, cap.unmatched) == ("purge", True, 0, 0)
    lives = cap.by_pid()
    cc = lives[40004][0]
    assert cc.exit_ns == T0 + 117_003_000 and cc.comm == "cc"
    assert cc.purge_ns == 310_000 and cc.exit_to_purge_end_ns == 330_000
    assert cc.teardown_ns == 310_000
    assert cc.reaper_ns == 8_000  # uvm_exit has little left to do after uvm_purge
    assert (cc.file_pages, cc.anon_pages) == (2100 + 650, 1800)
    # ld: two threads entered exit1; their counts add up, the purge follows the last.
    ld = lives[40009][0]
    assert ld.threads == 2 and ld.faults == (1406, 2920, 210)
    assert ld.exit_to_purge_end_ns == 7_000 + 20_000 + 512_000
    # The @flt counts btrace printed when it stopped go to the pid's last process.
    assert lives[40001][0].faults == (310, 95, 41)
    assert [(t.comm, t.faults) for t in lives[2233]] == [
        ("cron", (60, 30, 20)),
        ("sh", (74, 33, 21)),
    ]
    # Out of order in the file, in exit order here.
    exits = [t.exit_ns for t in cap.processes]
    assert exits == sorted(exits) and len(exits) == 11


def test_old_kernels_time_uvm_exit_in_the_reaper_in_order() -> None:
    cap = read_btrace(DATA / "reaper.btrace")
    assert (cap.variant, cap.dropped, cap.unmatched) == ("reaper", 0, 2)
    got = {t.pid: (t.purge, t.reaper_ns, t.teardown_ns) for t in cap.processes}
    assert got == {
        40004: (None, 910_000, 910_000),
        40002: (None, 95_000, 95_000),
        40009: (None, 1_480_000, 1_480_000),
    }


def test_btrace_fault_counts_become_the_sizes() -> None:
    r = import_trace(KDUMP, btrace_path=BTRACE)
    assert r.warnings == []
    p = {x.id: x for x in r.spec.process or ()}
    assert (p[40004].file_pages, p[40004].anon_pages) == (2750, 1800)
    assert (p[40009].file_pages, p[40009].anon_pages) == (1616, 2920)
    assert (p[40001].file_pages, p[40001].anon_pages) == (351, 95)
    assert (p[40002].file_pages, p[40002].anon_pages, p[40002].shm_pages) == (47, 18, 0)
    assert r.spec.source == "kdump make-j2.kdump; btrace make-j2.btrace"
    assert "page faults btrace counted" in r.spec.description


def test_processes_btrace_missed_keep_the_default_size() -> None:
    r = import_trace(KDUMP, btrace_path=DATA / "reaper.btrace")
    p = {x.id: x for x in r.spec.process or ()}
    assert (p[40002].file_pages, p[40002].anon_pages) == (47, 18)
    assert (p[40005].file_pages, p[40005].anon_pages) == (DEFAULT_FILE_PAGES, DEFAULT_ANON_PAGES)
    assert any(w.startswith("5 processes without an exit in") for w in r.warnings)


def test_more_faults_than_a_replay_holds_are_cut(tmp_path: Path) -> None:
    bt = tmp_path / "big.btrace"
    bt.write_text(f"E {T0 + 117_003_000} 40004 104417 5 {MAX_ANON_PAGES + 7} 1 cc\n")
    r = import_trace(KDUMP, btrace_path=bt)
    cc = next(x for x in r.spec.process or () if x.id == 40004)
    assert (cc.file_pages, cc.anon_pages) == (6, MAX_ANON_PAGES)
    assert any("1 process with more faults than a replay holds" in w for w in r.warnings)


# exitsim trace btrace-script -------------------------------------------------------


def test_the_script_prints_what_the_reader_reads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "btrace-script"]) == 0
    out = capsys.readouterr().out
    assert out == SCRIPT and out.count("{") == out.count("}")
    named = re.findall(r"^(\w+:\w+:\w+)$", out, flags=re.M)
    assert named == [p for p in PROBES if p != "syscall:exit:entry"]
    fill = {"%u": "1767225600000000000", "%d": "40001", "%s": "make"}
    kinds = []
    for fmt in re.findall(r'printf\("([^"]*)\\n"', out):
        line = re.sub(r"%[uds]", lambda m: fill[m.group(0)], fmt)
        rec = parse_line(line)
        kinds.append(type(rec).__name__ + (rec.kind if isinstance(rec, Mark) else ""))
    assert kinds == ["NoneType", "ExitLine", "MarkP", "MarkQ", "MarkU", "MarkV"]


def test_script_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "btrace-script", "--old-kernel"]) == 0
    old = capsys.readouterr().out
    assert "uvm_purge" not in old and "kprobe:uvm_exit:return" in old and "reaper" in old
    static = btrace_script(kprobe=False)
    assert "kprobe" not in static and "syscall:exit:entry" in static
    assert "tracepoint:uvm:fault" not in btrace_script(faults=False)
    line = parse_line("E 5 40001 152301 0 0 0 make")
    assert isinstance(line, ExitLine) and line.faults == (0, 0, 0)
    assert_usage_error(
        ["trace", "btrace-script", "--no-kprobe", "--no-faults"], "leave nothing", capsys
    )


# The command line and bad input -----------------------------------------------------


def test_cli_imports_kdump_and_btrace_into_a_file_run_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build.toml"
    argv = ["trace", "import", str(KDUMP), "--btrace", str(BTRACE), "-o", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 8 processes, 4 programs, span 400.0 ms")
    spec = load_workload_file(out)
    assert spec.process is not None and len(spec.process) == 8
    assert main(["run", "--workload", str(out), "--cpus", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["processes"]["count"] == 8
    again = tmp_path / "again.toml"
    assert main([*argv[:-1], str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert dump_workload(spec) == out.read_text()


KDUMP_HEAD = (
    " 40001/152301  make     1767225600.000100 CALL  fork()\n"
    " 40002/118830  make     1767225600.000300 RET   fork 0\n"
)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("garbage here", "not a kdump line"),
        (" 40001/152301  make     CALL  exit(0)", "without a time: print the capture with"),
        (" 40001/152301  make     1767225600.000400 RET   fork banana", "not a return value"),
        (" 40001/152301  make     1767225600.000400 RET   fork 123456/0x1e240", "pids are 1 to"),
        (" 40002/118830  make     1767225600.000400 NAMI  /bin/sh", "not a quoted path"),
        (" 40002/118830  make     1767225600.000400 CALL  exit(zero)", "not an exit status"),
        (" 40002/118830  make     1767225600.000400 PSIG  nothing", "not a signal"),
        (" 40002/118830  make     1767225600.000400 CALL  fork", "not a system call"),
        (" 40002/118830  make     1767225600.000400 ARGS\n\tbanana", "not an argument line"),
        (" 123456/118830  make     1767225600.000400 CALL  fork()", "pids are 1 to 99999"),
    ],
)
def test_bad_kdump_lines_stop_with_the_file_and_line(
    tmp_path: Path, line: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "t.kdump"
    f.write_text(KDUMP_HEAD + line + "\n")
    with pytest.raises(TraceError, match=rf"^{re.escape(str(f))}:3: .*{re.escape(why)}"):
        import_trace(f)
    out = tmp_path / "w.toml"
    assert_usage_error(["trace", "import", str(f), "-o", str(out)], f"{f}:3: ", capsys)
    assert not out.exists()
    r = import_trace(f, lenient=True)
    assert r.warnings[0] == f"{f}: skipped 1 line that could not be parsed"


def test_a_file_neither_strace_nor_kdump_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "t.txt"
    f.write_text("hello\n" + KDUMP_HEAD)
    out = tmp_path / "w.toml"
    assert_usage_error(
        ["trace", "import", str(f), "-o", str(out)],
        f"{f}:1: neither strace output (`strace -f -ttt`) nor kdump output (`kdump -TH`)",
        capsys,
    )
    assert list(tmp_path.iterdir()) == [f]
    # Lenient, the line is skipped and the rest read as kdump.
    r = import_trace(f, lenient=True)
    assert r.processes == 2 and r.warnings[0] == f"{f}: skipped 1 line that could not be parsed"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("E 12 40001 152301 1 2 x make", "exec_faults: not a whole number"),
        ("E 12 40001", "E line with 2 fields"),
        ("Q 12 40001", "Q line with 2 fields"),
        ("E 12 400001 152301 1 2 3 make", "pid: OpenBSD pids are 0 to 99999"),
        ("X 12 40001 152301 make", "not a line of exitsim's btrace script"),
    ],
)
def test_bad_btrace_lines_stop_with_the_file_and_line(
    tmp_path: Path, line: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bt = tmp_path / "t.btrace"
    bt.write_text(f"# exitsim-btrace 1 purge faults\nE {T0} 40001 152301 1 2 3 make\n{line}\n")
    with pytest.raises(TraceError, match=rf"^{re.escape(str(bt))}:3: {re.escape(why)}"):
        read_btrace(bt)
    out = tmp_path / "w.toml"
    argv = ["trace", "import", str(KDUMP), "--btrace", str(bt), "-o", str(out)]
    assert_usage_error(argv, f"{bt}:3: {why}", capsys)
    assert not out.exists()
    assert read_btrace(bt, lenient=True).skipped == 1


def test_captures_that_do_not_go_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "w.toml")
    strace = Path(__file__).parent / "data" / "traces" / "unfinished.strace"
    argv = ["trace", "import", str(strace), "--btrace", str(BTRACE), "-o", out]
    assert_usage_error(argv, "--btrace goes with kdump; strace takes --bpftrace", capsys)
    bpf = Path(__file__).parent / "data" / "traces" / "unfinished.bpftrace.txt"
    argv = ["trace", "import", str(KDUMP), "--bpftrace", str(bpf), "-o", out]
    assert_usage_error(argv, "--bpftrace goes with strace; kdump takes --btrace", capsys)
    empty = tmp_path / "e.btrace"
    empty.write_text("# exitsim-btrace 1 purge faults\n")
    argv = ["trace", "import", str(KDUMP), "--btrace", str(empty), "-o", out]
    assert_usage_error(argv, f"{empty}: no E, P, Q, U or V lines", capsys)
    assert_usage_error(["trace"], "import, syscalls or btrace-script", capsys)
