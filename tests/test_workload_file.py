"""The workload file (workloads/spec.py) and the replay of a process tree
(workloads/tree.py): validation names the file and field; a replay keeps who waits for
whom on any number of CPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.sim import SimConfig, build_kernel, simulate
from exitsim.workloads.spec import (
    MAX_ANON_PAGES,
    MAX_FILE_PAGES,
    TREE,
    WorkloadFileError,
    dump_workload,
    load_workload_file,
    parse_workload,
    to_config,
)
from exitsim.workloads.tree import ns
from tests.clikit import assert_usage_error

TINY = """\
format = 1
name = "tiny"

[[process]]
id = 1
program = "make"
user_ms = 4.0
file_pages = 450
anon_pages = 130
syscalls = { open = 6, read = 6 }

[[process]]
id = 2
parent = 1
program = "cc1"
start_ms = 1.0
user_ms = 20.0
file_pages = 2000
anon_pages = 1500

[[process]]
id = 3
parent = 1
program = "cc1"
start_ms = 1.0
user_ms = 10.0
file_pages = 1800
anon_pages = 900

[[process]]
id = 4
parent = 1
program = "ld"
after = [2, 3]
start_ms = 2.0
user_ms = 3.0
file_pages = 600
anon_pages = 300
"""


def write(tmp_path: Path, text: str, name: str = "w.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def tree_config(text: str, cpus: int, **kw: Any) -> SimConfig:
    workload, params = to_config(parse_workload(_toml(text), "t"))
    return SimConfig(cpus=cpus, workload=workload, workload_params=params, **kw)


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def run_tree(text: str, cpus: int, **kw: Any) -> Any:
    """Run to the end and return the kernel, for its meters."""
    k = build_kernel(tree_config(text, cpus, **kw))
    k.engine.run()
    k.engine.finish()
    return k


def by_comm(k: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in sorted(k.meters.records.values(), key=lambda r: r.pid):
        out.setdefault(r.comm, []).append(r)
    return out


# -- the format -------------------------------------------------------------------------


def test_a_file_loads_and_survives_a_round_trip(tmp_path: Path) -> None:
    spec = load_workload_file(write(tmp_path, TINY))
    assert spec.process is not None and [p.id for p in spec.process] == [1, 2, 3, 4]
    assert spec.process[3].after == [2, 3]
    assert spec.process[1].name == "cc1"
    again = load_workload_file(write(tmp_path, dump_workload(spec), "again.toml"))
    assert again == spec
    name, params = to_config(spec)
    assert name == TREE and len(params["process"]) == 4


BAD = [
    ("", "format: required field missing"),
    ("format = 2\n[generator]\nname='build'\n", "format: Input should be 1"),
    ("format = 1\n", "give exactly one of [generator] and [[process]]"),
    ("format = 1\nfoo = 3\n[generator]\nname='build'\n", "foo: unknown field"),
    ("format = 1\n[generator]\nname = 'nope'\n", "generator: unknown workload 'nope'"),
    ("format = 1\n[generator]\nname = 'build'\njob = 3\n", "unknown parameter 'job'"),
    ("format = 1\n[generator]\nname = 'build'\njobs = 'many'\n", "jobs: Input should be"),
    (
        TINY.replace("user_ms = 20.0", "user_ms = -1.0"),
        "process[1].user_ms: Input should be greater than or equal to 0",
    ),
    (TINY.replace("user_ms = 10.0", 'user_ms = "ten"'), "process[2].user_ms: Input should be"),
    (TINY.replace("anon_pages = 300", "anon_pages = 300\ncolour = 1"), "process[3].colour"),
    (TINY.replace("after = [2, 3]", "after = [2, 9]"), "process[3].after[1]: 9 is not an earlier"),
    (TINY.replace("after = [2, 3]", "after = [1]"), "process[3].after[0]: 1 is not an earlier"),
    (TINY.replace("id = 3", "id = 2"), "process[2].id: 2 is used twice"),
    (TINY.replace("id = 3", "id = 0"), "process[2].id: Input should be greater than or equal to 1"),
    (TINY.replace('parent = 1\nprogram = "ld"', 'parent = 7\nprogram = "ld"'), "parent: 7"),
    (TINY.replace('program = "make"\n', ""), "process[0].program: a root process must exec"),
    (TINY.replace("start_ms = 2.0", "start_ms = 5.0"), "past its parent's user_ms 4.0"),
    (TINY.replace("open = 6", "opne = 6"), "unknown system call 'opne'"),
    (TINY.replace("threads", "x") + "threads = 0\n", "process[3].threads"),
    ("format = 1\n[[process]\n", "not valid TOML"),
    ("format = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n", "not valid TOML: nested too deeply"),
    (TINY.replace("user_ms = 20.0", "user_ms = 1e300"), "process[1].user_ms: Input should be less"),
    (TINY.replace("start_ms = 2.0", "start_ms = 1.7e308"), "process[3].start_ms: Input should"),
    (TINY.replace("open = 6", "open = 1000000000000"), "process[0].syscalls.open: Input should"),
    (
        TINY.replace("anon_pages = 300", f"anon_pages = {MAX_ANON_PAGES + 1}"),
        "process[3].anon_pages",
    ),
    (
        TINY.replace("file_pages = 450", f"file_pages = {MAX_FILE_PAGES + 1}"),
        "process[0].file_pages",
    ),
    ("format = 1\n[generator]\nname = 'build'\ncc1_user_ms = inf\n", "cc1_user_ms must be"),
    ("format = 1\n[generator]\nname = 'build'\nas_user_sigma = 1e300\n", "as_user_sigma must"),
]


@pytest.mark.parametrize(("text", "needle"), BAD)
def test_a_bad_file_is_one_line_naming_file_and_field(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(WorkloadFileError) as e:
        load_workload_file(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value), str(e.value)
    out = str(tmp_path / "out.json")
    assert_usage_error(["run", "--workload", path, "-o", out], needle, capsys)
    assert not Path(out).exists()


def test_a_missing_file_and_a_tree_with_params_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(["run", "--workload", str(tmp_path / "no.toml")], "cannot read", capsys)
    path = write(tmp_path, TINY)
    assert_usage_error(["run", "--workload", path, "--param", "foo=2"], "is a process tree", capsys)


@pytest.mark.parametrize(
    ("param", "needle"),
    [
        ("cc1_user_ms=inf", "cc1_user_ms must be a finite number from 0 to 86400000"),
        ("cc1_user_ms=1e300", "cc1_user_ms must be"),
        ("as_user_ms=-1", "as_user_ms must be"),
        ("cc1_anon_sigma=1e300", "cc1_anon_sigma must be"),
        ("cc1_text_pages=-1", "cc1_text_pages must be from 1"),
    ],
)
def test_a_generator_parameter_out_of_range_is_refused(
    param: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(["run", "--workload", "build", "--param", param], needle, capsys)


def test_the_largest_sizes_a_file_may_give_still_run() -> None:
    """The MAX_ sizes fit the replay's address layout (one more is refused above), on
    a machine with room for them side by side."""
    text = TINY.replace("file_pages = 450", f"file_pages = {MAX_FILE_PAGES}")
    text = text.replace("anon_pages = 300", f"anon_pages = {MAX_ANON_PAGES}")
    cfg = tree_config(text, 2, total_pages=3 * MAX_ANON_PAGES)
    assert simulate(cfg)["processes"]["count"] == 4


def test_a_generator_file_runs_like_the_name_and_params(tmp_path: Path) -> None:
    path = write(tmp_path, "format = 1\n[generator]\nname = 'build'\njobs = 3\n")
    out_file, out_name = tmp_path / "f.json", tmp_path / "n.json"
    common = ["run", "--cpus", "2", "--json"]
    assert main([*common, "--workload", path, "-o", str(out_file)]) == 0
    assert main([*common, "--param", "jobs=3", "-o", str(out_name)]) == 0
    assert out_file.read_text() == out_name.read_text()


# -- the replay --------------------------------------------------------------------------


def test_every_process_of_the_tree_runs_with_its_own_user_time() -> None:
    k = run_tree(TINY, cpus=4)
    recs = by_comm(k)
    assert {c: len(v) for c, v in recs.items()} == {"make": 1, "cc1": 2, "ld": 1}
    # Single-threaded processes run exactly their user_ms in user mode.
    assert sorted(r.user_ns for r in recs["cc1"]) == [ns(10.0), ns(20.0)]
    assert recs["ld"][0].user_ns == ns(3.0)
    assert recs["make"][0].user_ns == ns(4.0)


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_after_holds_on_any_number_of_cpus(cpus: int) -> None:
    """ld is forked only once make has waited for both compilers: its exit comes at
    least its own user time after the later of their wait4 returns."""
    k = run_tree(TINY, cpus=cpus)
    recs = by_comm(k)
    ld = recs["ld"][0]
    last_cc1 = max(r.reaped_ns for r in recs["cc1"])
    assert ld.exit1_ns - ns(3.0) >= last_cc1


def test_independent_children_overlap_only_when_there_are_cpus() -> None:
    """The two compilers are independent: with two CPUs or more they run side by side,
    on one they take turns; the structure is the same, the times follow from it."""
    one = simulate(tree_config(TINY, 1))["makespan_ns"]
    two = simulate(tree_config(TINY, 2))["makespan_ns"]
    assert one > ns(4.0 + 20.0 + 10.0 + 3.0)  # everything in turn
    assert two < one - ns(8.0)  # the 10 ms compiler hides behind the 20 ms one


def test_a_tree_is_deterministic_and_carried_whole_in_the_result() -> None:
    cfg = tree_config(TINY, 2, policy="reaper", arch="arm64")
    a, b = simulate(cfg), simulate(cfg)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # The config in the result is enough to run it again.
    again = simulate(SimConfig(**a["config"]))
    assert again["makespan_ns"] == a["makespan_ns"]


THREADED = """\
format = 1
[[process]]
id = 1
program = "sh"
user_ms = 1.0
file_pages = 400
anon_pages = 64

[[process]]
id = 2
parent = 1
program = "httpd"
user_ms = 5.0
threads = 4
file_pages = 700
anon_pages = 2000
"""


@pytest.mark.parametrize("policy", ["reaper", "purge+pmap_purge", "no-reaper"])
def test_worker_threads_run_until_the_process_exits_and_are_freed(policy: str) -> None:
    """The three workers compute until the main thread's exit single-threads them:
    the process's user time is more than its own 5 ms (the workers ran alongside) and
    the run ends with every thread freed (simulate refuses otherwise)."""
    r = simulate(tree_config(THREADED, 4, policy=policy, arch="arm64"))
    httpd = next(p for p in r["per_process"] if p["comm"] == "httpd")
    assert httpd["user_ns"] > ns(5.0) + 2 * ns(4.0)


SHM = """\
format = 1
[[process]]
id = 1
program = "sh"
user_ms = 2.0
file_pages = 400
anon_pages = 64

[[process]]
id = 2
parent = 1
program = "db"
start_ms = 0.5
user_ms = 3.0
file_pages = 400
anon_pages = 64
shm_pages = 512
shm_key = "KEY2"

[[process]]
id = 3
parent = 1
program = "db"
start_ms = 0.5
user_ms = 3.0
file_pages = 400
anon_pages = 64
shm_pages = 512
shm_key = "KEY3"
"""


def test_processes_naming_one_key_share_one_segment() -> None:
    """Two processes attached at the same time with the same key fault the segment's
    pages in once; with different keys, twice."""
    apart = simulate(tree_config(SHM, 2))["memory"]
    shared = simulate(tree_config(SHM.replace("KEY3", "KEY2"), 2))["memory"]
    assert apart["pages_allocated"] - shared["pages_allocated"] == 512


def test_a_child_without_exec_writes_the_heap_it_inherited() -> None:
    """A fork without exec copies on write: the child writes the heap it inherited
    from make (130 anon pages less 8 of data and 16 of stack), one copy per page; an
    exec'd child copies nothing."""
    no_exec = TINY.replace('program = "ld"\n', "")
    assert simulate(tree_config(TINY, 2))["vm"]["cow_copies"] == 0
    assert simulate(tree_config(no_exec, 2))["vm"]["cow_copies"] == 130 - 8 - 16


SHARED = """\
format = 1
[[process]]
id = 1
program = "sh"
user_ms = 2.0
file_pages = 400
anon_pages = 64

[[process]]
id = 2
parent = 1
program = "db"
start_ms = 0.5
user_ms = 3.0
file_pages = 400
anon_pages = 64
shm_pages = 512
shm_key = "K"

[[process]]
id = 3
parent = 1
program = "db"
start_ms = 0.5
user_ms = 3.0
file_pages = 400
anon_pages = 64
shm_pages = 256
shm_key = "K"

[[process]]
id = 4
parent = 2
user_ms = 1.0
shm_pages = 1024
"""


def test_a_shared_segment_is_written_whole_whatever_size_each_sharer_gives() -> None:
    """One key, two sizes, and a child without exec that inherits the attachment:
    each process writes the segment it is attached to, all of it, so both
    granularities do the same work (a sharer's own size only sizes a new segment)."""

    def work(granularity: str) -> tuple[int, ...]:
        r = simulate(tree_config(SHARED, 2, granularity=granularity))
        vm = r["vm"]
        return (r["processes"]["count"], vm["pages_allocated"], vm["pages_freed"], vm["faults"])

    assert work("exact") == work("range")
    assert work("range")[0] == 4
