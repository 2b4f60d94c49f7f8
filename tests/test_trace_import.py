"""exitsim trace import and exitsim record: the shipped Lua capture becomes the tree
its README describes, hand-made strace files cover the line forms one by one, and a
real command is recorded under strace."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.sim import SimConfig, simulate
from exitsim.workloads.bpftrace import SCRIPT, Exec, Fork, MmExit, TaskExit, parse_record
from exitsim.workloads.importer import (
    DEFAULT_ANON_PAGES,
    DEFAULT_FILE_PAGES,
    ImportResult,
    import_trace,
)
from exitsim.workloads.spec import (
    MAX_ANON_PAGES,
    MAX_FILE_PAGES,
    ProcessSpec,
    dump_workload,
    load_workload_file,
    to_config,
)
from exitsim.workloads.tracelines import TraceError
from tests.clikit import assert_usage_error

DATA = Path(__file__).parent / "data" / "traces"
LUA = DATA / "lua-make-j2.strace"
LUA_BT = DATA / "lua-make-j2.bpftrace.txt"
MAKE = 27285


@pytest.fixture(scope="module")
def lua() -> ImportResult:
    return import_trace(LUA, LUA_BT)


def by_id(result: ImportResult) -> dict[int, ProcessSpec]:
    assert result.spec.process is not None
    return {p.id: p for p in result.spec.process}


def children(result: ImportResult, pid: int) -> list[ProcessSpec]:
    """In list order, which is the order the replay forks them in."""
    assert result.spec.process is not None
    return [p for p in result.spec.process if p.parent == pid]


def bpf_lines(kind: str) -> list[list[str]]:
    return [x.split() for x in LUA_BT.read_text().splitlines() if x.startswith(kind + " ")]


# The shipped capture ------------------------------------------------------------


def test_lua_is_109_processes_under_make_with_the_readme_counts(lua: ImportResult) -> None:
    procs = by_id(lua)
    assert len(procs) == lua.processes == 109
    root = procs[MAKE]
    assert root.parent is None and root.program == "/usr/bin/make" and root.start_ms == 0
    assert [p.id for p in procs.values() if p.parent is None] == [MAKE]
    # README, "Per command".
    assert Counter(p.comm for p in procs.values()) == {
        "gcc": 35,
        "cc1": 34,
        "as": 34,
        "ar": 1,
        "ranlib": 1,
        "ld": 1,
        "collect2": 1,
        "touch": 1,
        "make": 1,
    }
    assert lua.programs == 9
    assert all(p.exit_status == 0 and p.threads == 1 and not p.syscalls for p in procs.values())
    cc1s = [p for p in procs.values() if p.comm == "cc1"]
    assert all(p.program == "/usr/lib/gcc/x86_64-linux-gnu/12/cc1" for p in cc1s)
    assert all(procs[p.parent or 0].comm == "gcc" for p in cc1s)
    assert all(procs[p.parent or 0].parent == MAKE for p in cc1s)
    # The link: make -> gcc -> collect2 -> ld.
    (ld,) = (p for p in procs.values() if p.comm == "ld")
    collect2 = procs[ld.parent or 0]
    assert collect2.comm == "collect2" and procs[collect2.parent or 0].parent == MAKE


def test_each_gcc_driver_runs_as_after_its_cc1(lua: ImportResult) -> None:
    drivers = [p for p in children(lua, MAKE) if p.comm == "gcc"]
    compiles = 0
    for gcc in drivers:
        kids = children(lua, gcc.id)
        if [k.comm for k in kids] == ["cc1", "as"]:
            cc1, as_ = kids
            assert cc1.after == [] and as_.after == [cc1.id]
            assert cc1.start_ms <= as_.start_ms <= gcc.user_ms
            compiles += 1
        else:
            assert [k.comm for k in kids] == ["collect2"]  # the link
    assert compiles == 34


def test_make_children_keep_at_most_two_jobs_running(lua: ImportResult) -> None:
    """Replay make's forks with the after sets: each fork waits for the jobs its
    after set names, so never more than -j2 run, and every fork after the first
    two waits for one to finish."""
    running: set[int] = set()
    for i, c in enumerate(children(lua, MAKE)):
        assert set(c.after) <= running
        running -= set(c.after)
        running.add(c.id)
        assert len(running) <= 2
        assert (c.after != []) == (i >= 2)


def test_user_time_is_positive_and_within_the_lifetime(lua: ImportResult) -> None:
    forks = {int(f[3]): int(f[1]) for f in bpf_lines("F")}
    exits = {int(x[2]): int(x[1]) for x in bpf_lines("X")}
    procs = by_id(lua)
    for p in procs.values():
        life_ms = (exits[p.id] - forks[p.id]) / 1e6
        assert 0 < p.user_ms <= life_ms + 0.001, p
        if p.parent is not None:
            assert p.start_ms <= procs[p.parent].user_ms
    # make mostly sleeps (pselect, wait4, vfork) and the compilers do the work.
    assert procs[MAKE].user_ms < 100


def test_resident_sizes_and_comm_are_the_x_lines(lua: ImportResult) -> None:
    procs = by_id(lua)
    xs = bpf_lines("X")
    assert len(xs) == 109
    for x in xs:
        p = procs[int(x[3])]
        assert p.comm == x[4]
        assert (p.file_pages, p.anon_pages, p.shm_pages) == (int(x[6]), int(x[7]), int(x[8]))


def test_without_bpftrace_every_process_has_the_default_size() -> None:
    r = import_trace(LUA)
    procs = by_id(r)
    assert len(procs) == 109
    assert {(p.file_pages, p.anon_pages) for p in procs.values()} == {
        (DEFAULT_FILE_PAGES, DEFAULT_ANON_PAGES)
    }
    assert "default resident size" in r.spec.description
    assert procs[27288].comm == "cc1"  # the exec's base name
    assert [c.after for c in children(r, 27287)] == [[], [27289]]


def test_cli_import_writes_a_file_that_loads_and_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lua.toml"
    assert main(["trace", "import", str(LUA), "--bpftrace", str(LUA_BT), "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"{out}: 109 processes, 9 programs, span 58")
    spec = load_workload_file(out)
    assert spec.name == "lua-make-j2" and spec.process is not None and len(spec.process) == 109
    assert "`make -j2`" in spec.description
    args = ["compare", "--workload", str(out), "--cpus", "2,4", "--policies", "reaper,purge"]
    assert main([*args, "--arches", "amd64", "--workers", "1", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["config"]["cpus"], r["config"]["policy"]) for r in results] == [
        (2, "reaper"),
        (2, "purge"),
        (4, "reaper"),
        (4, "purge"),
    ]
    assert all(r["config"]["workload"] == "tree" for r in results)
    assert all(r["processes"]["count"] == 109 for r in results)


def test_the_lua_numbers_docs_workloads_gives(lua: ImportResult) -> None:
    """docs/workloads.md: the user times add up to 11.3 s; replayed, the tree takes
    about 6.06 s on 2 CPUs, 11.9 s on 1 and still about 6 s on 32 (make -j2's
    structure: more CPUs run no more jobs at once)."""
    spec = lua.spec.process or []
    assert 11_250 < sum(p.user_ms for p in spec) < 11_350
    workload, params = to_config(lua.spec)

    def wall_s(cpus: int) -> float:
        cfg = SimConfig(cpus=cpus, workload=workload, workload_params=params)
        return simulate(cfg)["makespan_ns"] / 1e9

    one, two, many = wall_s(1), wall_s(2), wall_s(32)
    assert 11.8 < one < 12.0
    assert 6.0 < two < 6.1
    assert 5.9 < many <= two


def test_the_designs_on_the_lua_build_as_docs_designs_says(lua: ImportResult) -> None:
    """docs/designs.md, "On a real build": on arm64, purge without pmap_purge pays
    two broadcast TLBIs per resident page in each exit (hundreds of times the reaper's
    traffic, a far longer p99 exit), pmap_purge brings it back to within a few
    percent; on amd64 the purge designs invalidate and fully flush more on their own
    CPU, and their processes' threads spend a little more sys time, which wait4 does
    not report."""
    workload, params = to_config(lua.spec)

    def run(policy: str, arch: str) -> dict[str, Any]:
        cfg = SimConfig(policy=policy, arch=arch, cpus=2, workload=workload, workload_params=params)
        return simulate(cfg)

    arm = {p: run(p, "arm64") for p in ("reaper", "purge", "purge+pmap_purge")}
    bcast = {p: r["tlb"]["broadcasts"] for p, r in arm.items()}
    assert bcast["purge"] > 100 * bcast["reaper"]
    assert bcast["purge+pmap_purge"] < 1.1 * bcast["reaper"]
    p99 = {p: r["processes"]["exit_latency_ns_p99"] for p, r in arm.items()}
    assert p99["purge"] > 5 * p99["reaper"]
    assert p99["purge+pmap_purge"] < 1.1 * p99["reaper"]
    assert arm["purge"]["makespan_ns"] > arm["reaper"]["makespan_ns"]

    amd = {p: run(p, "amd64") for p in ("reaper", "purge")}
    for key in ("page_invalidations", "full_flushes"):
        assert amd["purge"]["tlb"][key] > amd["reaper"]["tlb"][key]
    # The teardown moves into each process: its threads' sys time grows a little;
    # what wait4 reports hardly moves, since exit1 folds its times before the purge
    # (kern_exit.c 1.224 on) and the purge reaches ps_tu only after calcru.
    thread = {p: r["processes"]["thread_sys_ns_mean"] for p, r in amd.items()}
    wait4 = {p: r["processes"]["charged_sys_ns_mean"] for p, r in amd.items()}
    assert thread["reaper"] < thread["purge"] < 1.2 * thread["reaper"]
    moved = thread["purge"] - thread["reaper"]
    assert abs(wait4["purge"] - wait4["reaper"]) * 10 < moved


def test_import_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = [tmp_path / "a.toml", tmp_path / "b.toml"]
    for out in outs:
        assert main(["trace", "import", str(LUA), "--bpftrace", str(LUA_BT), "-o", str(out)]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    again = import_trace(LUA, LUA_BT, name="lua-make-j2")
    assert dump_workload(again.spec).encode() == outs[0].read_bytes()


# Hand-made edge cases ---------------------------------------------------------------


def test_unfinished_resumed_and_child_lines_before_the_parent_resumes() -> None:
    """make's clone3 returns on a resumed line after the child's own lines (one of
    them with an earlier timestamp than the line before it); make sleeps in wait4
    between unfinished and resumed."""
    r = import_trace(DATA / "unfinished.strace")
    assert r.warnings == []
    make, cc, ld = r.spec.process or []
    assert (cc.id, cc.parent, cc.program) == (101, 100, "/usr/bin/cc")
    assert (ld.id, ld.parent, ld.after) == (102, 100, [101])
    # make: 91 ms alive, asleep 3 (vfork) + 38 (wait4) + 2 (vfork) + 19 (wait4).
    assert make.user_ms == 29.0
    assert (cc.start_ms, cc.user_ms) == (10.0, 41.0)
    assert (ld.start_ms, ld.user_ms) == (19.0, 21.0)  # 60 ms in, less 41 asleep


def test_bpftrace_joins_by_pid_and_warns_about_pids_in_one_file() -> None:
    r = import_trace(DATA / "unfinished.strace", DATA / "unfinished.bpftrace.txt")
    procs = by_id(r)
    assert list(procs) == [100, 101, 103, 102]
    # Lifetimes F to X; 103 is only in bpftrace (a child of cc), 102 only in strace.
    assert procs[100].user_ms == 29.5  # 91.5 ms, less 62 asleep
    assert (procs[101].comm, procs[101].user_ms) == ("cc", 40.0)
    assert (procs[101].file_pages, procs[101].anon_pages) == (600, 40)
    assert procs[100].anon_pages == 0  # -3 in the X line: a percpu counter's error
    cc1 = procs[103]
    assert (cc1.parent, cc1.program, cc1.start_ms, cc1.user_ms) == (
        101,
        "/usr/lib/gcc/cc1",
        9.5,
        20.0,
    )
    assert (cc1.file_pages, cc1.anon_pages) == (5000, 3000)
    assert (procs[102].file_pages, procs[102].anon_pages) == (
        DEFAULT_FILE_PAGES,
        DEFAULT_ANON_PAGES,
    )
    assert r.warnings == [
        "1 process only in the strace capture (default sizes): 102",
        "1 process only in the bpftrace capture (no waits known): 103",
    ]
    # The unrelated task 777 and the later reuse of pid 101 are not in the tree.
    assert 777 not in procs and procs[101].comm == "cc"


def test_failed_exec_probes_are_passed_over() -> None:
    r = import_trace(DATA / "exec-probes.strace")
    gcc, as_ = r.spec.process or []
    assert as_.program == "/usr/bin/as" and as_.comm == "as"
    # gcc: 11.5 ms alive, asleep 1.5 in vfork (until its child's exec) and 7.9 in wait4.
    assert gcc.user_ms == 2.1
    assert (as_.start_ms, as_.user_ms) == (1.0, 9.5)


def test_vfork_parent_sleeps_until_the_child_execs_or_exits() -> None:
    r = import_trace(DATA / "vfork.strace")
    sh, child, true = r.spec.process or []
    # The first child exits without exec (releasing sh at its exit, 4.0 ms, before
    # sh's vfork returns at 5.0); the second execs at 8.0, sh returns at 9.5.
    assert sh.user_ms == 15.0 - 2.0 - 1.0 - 3.0
    assert (child.program, child.comm, child.exit_status) == (None, "sh", 3)
    assert (true.after, true.start_ms) == ([301], 5.0)


def test_clone_thread_makes_threads_not_processes() -> None:
    r = import_trace(DATA / "threads.strace")
    py, ls = r.spec.process or []
    assert (py.id, py.threads) == (400, 3)
    # A thread forked ls: its parent is the thread's process.
    assert (ls.id, ls.parent, ls.program, ls.threads) == (403, 400, "/bin/ls", 1)
    assert r.processes == 2


def test_a_process_still_running_exits_at_the_end_of_the_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.toml"
    assert main(["trace", "import", str(DATA / "running.strace"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 process had not exited when the capture ended" in err
    spec = load_workload_file(out)
    sleep = next(p for p in spec.process or [] if p.comm == "sleep")
    assert sleep.user_ms == 8.5  # forked at 1.0 ms, the capture ends at 9.5
    assert "1 process had not exited when the capture ended" in spec.description


def test_killed_processes_exit_with_128_plus_the_signal() -> None:
    r = import_trace(DATA / "killed.strace")
    sh, crash, sleep = r.spec.process or []
    assert (sh.exit_status, crash.exit_status, sleep.exit_status) == (1, 128 + 11, 128 + 9)
    assert sleep.after == [crash.id]


def test_a_garbage_line_stops_a_strict_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.toml"
    bad = DATA / "garbage.strace"
    assert_usage_error(["trace", "import", str(bad), "-o", str(out)], f"{bad}:6: not an", capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_lenient_skips_and_counts_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.toml"
    bad = DATA / "garbage.strace"
    assert main(["trace", "import", str(bad), "-o", str(out), "--lenient"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {bad}: skipped 1 line that could not be parsed" in err
    clean = import_trace(DATA / "unfinished.strace")
    assert load_workload_file(out).process == clean.spec.process


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("100 1000.1 wait4(-1, 0x7ffc, WNOHANG, NULL) = 0", ""),
        ('100 12:00:01.000000 execve("/bin/x", ["x"], 0x1) = 0', "-ttt"),
        ('1000.000000 execve("/bin/x", ["x"], 0x1) = 0', "not an strace line"),
        ("100 1000.1 <... wait4 resumed>) = 0", "no unfinished wait4"),
        ("100 1000.1 +++ killed by SIGNOPE +++", "unknown signal"),
        ("100 1000.1 wait4(-1) = banana", "not a return value"),
        ('0 1000.1 execve("/bin/y", ["y"], 0x1) = 0', "task ids are 1 to 4194304 (got 0)"),
        ('5000000 1000.1 execve("/bin/y", ["y"], 0x1) = 0', "task ids are 1 to 4194304"),
        ("100 1000.1 vfork() = 99999999999", "vfork result: task ids are 1 to"),
        ("100 1000.1 wait4(-1, NULL, 0, NULL) = 5000000", "wait4 result: task ids are 1 to"),
    ],
)
def test_strict_errors_name_the_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    f = tmp_path / "t.strace"
    f.write_text('100 1000.000000 execve("/bin/x", ["x"], 0x1) = 0\n' + line + "\n")
    if not why:
        assert import_trace(f).processes == 1
        return
    with pytest.raises(TraceError, match=rf"^{re.escape(str(f))}:2: .*{re.escape(why)}"):
        import_trace(f)


def test_bpftrace_garbage_is_an_error_naming_its_line(tmp_path: Path) -> None:
    bt = tmp_path / "t.bt.txt"
    bt.write_text("F 1 0 100\nX 2 100 100 make 1 10 oops 0 10\n")
    with pytest.raises(TraceError, match=rf"^{re.escape(str(bt))}:2: anon_pages: not a whole"):
        import_trace(DATA / "unfinished.strace", bt)
    r = import_trace(DATA / "unfinished.strace", bt, lenient=True)
    assert r.warnings[0] == f"{bt}: skipped 1 line that could not be parsed"


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ("100 1000.1 fork() = 100\n", "the process tree has a cycle"),
        ("100 1000.1 fork() = 200\n200 1000.2 fork() = 100\n", "the process tree has a cycle"),
        ("100 99999999999.0 +++ exited with 0 +++\n", "process 100: user_ms would be 1e+14 ms"),
    ],
)
def test_an_impossible_capture_is_refused_naming_the_file(
    tmp_path: Path, lines: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process forking itself, a cycle, a timestamp a lifetime away: one line."""
    f = tmp_path / "t.strace"
    f.write_text('100 1000.000000 execve("/bin/x", ["x"], 0x1) = 0\n' + lines)
    out = tmp_path / "w.toml"
    assert_usage_error(["trace", "import", str(f), "-o", str(out)], f"{f}: ", capsys)
    with pytest.raises(TraceError, match=re.escape(why)):
        import_trace(f)
    assert not out.exists()


def test_bpftrace_sizes_past_what_a_replay_holds_are_cut_with_a_warning(tmp_path: Path) -> None:
    bt = tmp_path / "t.bt.txt"
    bt.write_text("X 540000000 101 101 cc 1 100000000 1000000000000000000 0 9000\n")
    r = import_trace(DATA / "unfinished.strace", bt)
    cc = next(p for p in r.spec.process if p.id == 101)
    assert (cc.file_pages, cc.anon_pages) == (MAX_FILE_PAGES, MAX_ANON_PAGES)
    assert any("1 process larger than a replay holds" in w for w in r.warnings)
    bt.write_text("F 510500000 100 0\n")
    with pytest.raises(TraceError, match=rf"^{re.escape(str(bt))}:1: child: task ids are 1 to"):
        import_trace(DATA / "unfinished.strace", bt)


def test_the_record_script_prints_what_the_reader_reads() -> None:
    """Each printf of the bpftrace script, filled in, parses as its kind of line."""
    fill = {"%llu": "123", "%lu": "9", "%ld": "-2", "%d": "42", "%s": "a b"}
    kinds = []
    for fmt in re.findall(r'printf\("([^"]*)\\n"', SCRIPT):
        line = re.sub(r"%(llu|lu|ld|d|s)", lambda m: fill[m.group(0)], fmt)
        kinds.append(type(parse_record(line)))
    assert kinds == [Fork, Exec, TaskExit, TaskExit, MmExit]


def test_trace_needs_a_subcommand_and_readable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(["trace"], "trace: a subcommand is needed: import", capsys)
    out = str(tmp_path / "w.toml")
    missing = str(tmp_path / "none.strace")
    assert_usage_error(["trace", "import", missing, "-o", out], "cannot read", capsys)
    assert_usage_error(
        ["trace", "import", str(LUA), "-o", str(tmp_path / "no" / "w.toml")],
        "does not exist",
        capsys,
    )
    assert_usage_error(["trace", "import", str(LUA), "-o", str(tmp_path)], "a directory", capsys)
    assert_usage_error(["trace", "import", str(LUA), "-o", ""], "file name is empty", capsys)
    assert sorted(tmp_path.iterdir()) == []


# exitsim record ---------------------------------------------------------------------


def test_record_runs_a_command_under_strace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shutil.which("strace"), "strace is required (make installs it)"
    out = tmp_path / "sh.toml"
    # ls is not the last command, so the shell forks it rather than exec'ing it.
    assert main(["record", "-o", str(out), "--", "sh", "-c", "ls >/dev/null; true"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 2 processes, 2 programs")
    spec = load_workload_file(out)
    sh, ls = spec.process or []
    assert sh.parent is None and (sh.program or "").endswith("/sh")
    assert ls.parent == sh.id and (ls.program or "").endswith("/ls") and ls.comm == "ls"
    assert spec.name == "sh" and spec.description.startswith("Recorded with exitsim record")


def test_record_with_bpftrace_takes_the_sizes_at_exit(
    tmp_path: Path, tracefs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With bpftrace there and allowed, record runs its own script around the command
    and the resident sizes are the real ones at exit, not the defaults."""
    assert shutil.which("bpftrace"), "bpftrace is required (make installs it)"
    out = tmp_path / "sh.toml"
    assert main(["record", "-o", str(out), "--", "sh", "-c", "ls >/dev/null; true"]) == 0
    err = capsys.readouterr().err
    assert "bpftrace" not in err and "warning" not in err, err
    spec = load_workload_file(out)
    assert spec.source == "exitsim record: strace and bpftrace"
    sh, ls = spec.process or []
    assert (ls.parent, ls.comm) == (sh.id, "ls")
    # ls maps its own text and libc: hundreds of file pages, and not the default 840/256.
    assert ls.file_pages > 100 and (ls.file_pages, ls.anon_pages) != (840, 256)


def test_record_without_strace_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    out = str(tmp_path / "x.toml")
    assert_usage_error(
        ["record", "-o", out, "--", "sh", "-c", "true"],
        "strace not found: install it with apt-get install strace",
        capsys,
    )
    assert not Path(out).exists()


def test_record_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["record", "--"], "give the command after --", capsys)


def test_bpftrace_threads_count_and_the_group_exit_gives_the_sizes(tmp_path: Path) -> None:
    """The X line that ends the thread group (group_dead 1) has the process's
    resident set, even when it is not the leader's."""
    bt = tmp_path / "threads.bt.txt"
    bt.write_text(
        "F 100000000 1 400\n"
        "F 110000000 400 401\n"
        "F 111000000 400 402\n"
        "F 112000000 401 403\n"
        "X 120000000 403 403 ls 1 300 80 0 400\n"
        "X 130000000 401 400 worker 0 900 350 0 1000\n"
        "X 140000000 400 400 python3 0 900 350 0 1000\n"
        "X 140300000 402 400 python3 1 901 351 2 1000\n"
    )
    r = import_trace(DATA / "threads.strace", bt)
    py, ls = r.spec.process or []
    assert (py.threads, py.comm, py.file_pages, py.anon_pages, py.shm_pages) == (
        3,
        "python3",
        901,
        351,
        2,
    )
    assert (ls.parent, ls.file_pages, ls.anon_pages) == (400, 300, 80)
    assert r.warnings == []


def test_a_thread_exec_supersedes_the_leader_and_pid_prefixes_parse(tmp_path: Path) -> None:
    """strace writes ``[pid N]`` when it writes to a terminal; a thread's execve
    continues under the leader's pid after ``+++ superseded by execve +++``."""
    f = tmp_path / "t.strace"
    f.write_text(
        '700 7000.000000 execve("/usr/bin/prog", ["prog"], 0x1 /* 1 var */) = 0\n'
        "700 7000.001000 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|"
        "CLONE_THREAD|CLONE_SYSVSEM, exit_signal=0, stack=0x7f, stack_size=0x7fff80}"
        " => {parent_tid=[701]}, 88) = 701\n"
        '[pid   701] 7000.002000 execve("/usr/bin/next", ["next"], 0x1 /* 1 var */'
        " <unfinished ...>\n"
        "[pid   700] 7000.003000 +++ superseded by execve in pid 701 +++\n"
        "700 7000.003100 <... execve resumed>) = 0\n"
        "700 7000.010000 exit_group(0)                     = ?\n"
        "700 7000.010500 +++ exited with 0 +++\n"
    )
    r = import_trace(f)
    (p,) = r.spec.process or []
    assert (p.id, p.program, p.threads, p.user_ms) == (700, "/usr/bin/next", 2, 10.5)
    assert r.warnings == []


def test_record_when_strace_may_not_ptrace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An strace that cannot attach (here a stand-in failing as strace does without
    ptrace rights) stops record with one line before the command runs."""
    fake = tmp_path / "strace"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: '
        'Operation not permitted" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert_usage_error(
        ["record", "-o", str(tmp_path / "x.toml"), "--", "sh", "-c", "true"],
        "strace cannot trace here (strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: "
        "Operation not permitted)",
        capsys,
    )
