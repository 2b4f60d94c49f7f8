"""A process tree replayed at another parallelism (``jobs``, workloads/tree.py): make's
children run up to ``jobs`` at a time in the capture's fork order, a barrier (a child
forked with none of its siblings running) still waits for everything before it, and
without ``jobs`` nothing changes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.sim import SimConfig, build_kernel, simulate
from exitsim.workloads import registry
from exitsim.workloads.importer import import_trace
from exitsim.workloads.spec import (
    ProcessSpec,
    WorkloadFileError,
    load_workload_file,
    parse_workload,
    to_config,
)
from exitsim.workloads.tree import TreeReplay, barriers, job_prefixes, jobs_warnings
from tests.clikit import assert_usage_error

TRACES = Path(__file__).parent / "data" / "traces"


def make_tree(afters: list[list[int]], link_after: list[int], cc_ms: float = 10.0) -> str:
    """make (id 1) with one cc child per entry of ``afters`` (ids 2, 3, ...; each
    entry its ``after``) and then a link child (its ``after`` ``link_after``)."""
    text = 'format = 1\nname = "j"\n\n[[process]]\nid = 1\nprogram = "/usr/bin/make"\n'
    text += "user_ms = 3.0\nfile_pages = 500\nanon_pages = 100\n"
    rows = [("cc", a, cc_ms) for a in afters] + [("ld", link_after, 4.0)]
    for i, (prog, after, ms) in enumerate(rows):
        text += f"\n[[process]]\nid = {i + 2}\nparent = 1\nprogram = {prog!r}\n"
        text += f"start_ms = {0.5 + 0.1 * i}\nafter = {after}\nuser_ms = {ms}\n"
        text += "file_pages = 900\nanon_pages = 400\n"
    return text


#: A make -j2 capture: six compiles, each started when one of the two running ended,
#: then the link once both last compiles were reaped (a barrier).
J2 = make_tree([[], [], [2], [3], [4], [5]], [6, 7])
#: The same build captured with make -j1: each child forked after the one before ended.
J1 = make_tree([[], [2], [3], [4], [5], [6]], [7])


def specs(text: str) -> list[ProcessSpec]:
    spec = parse_workload(tomllib.loads(text), "t")
    assert spec.process is not None
    return spec.process


def config(text: str, cpus: int, jobs: int | None = None, **kw: Any) -> SimConfig:
    workload, params = to_config(parse_workload(tomllib.loads(text), "t"))
    if jobs is not None:
        params = params | {"jobs": jobs}
    return SimConfig(cpus=cpus, workload=workload, workload_params=params, **kw)


def replay(cfg: SimConfig, monkeypatch: pytest.MonkeyPatch) -> TreeReplay:
    """Run ``cfg`` to the end and return its TreeReplay, for the fork and reap times
    it kept of every process."""
    kept: list[TreeReplay] = []
    start = registry.start_tree

    def keep(k: Any, params: dict[str, Any], seed: int) -> TreeReplay:
        kept.append(start(k, params, seed))
        return kept[-1]

    monkeypatch.setattr(registry, "start_tree", keep)
    k = build_kernel(cfg)
    k.engine.run()
    k.engine.finish()
    return kept[0]


def peak_running(r: TreeReplay, ids: list[int]) -> int:
    """The most of ``ids`` forked and not yet reaped at one time."""
    events = sorted([(r.forked_ns[i], 1) for i in ids] + [(r.reaped_ns[i], -1) for i in ids])
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


CCS = [2, 3, 4, 5, 6, 7]
LINK = 8


# -- the rule ----------------------------------------------------------------------------


def test_the_capture_of_make_j2_has_the_link_as_its_only_barrier() -> None:
    children = specs(J2)[1:]
    assert barriers(children) == [False] * 6 + [True]
    assert job_prefixes(children) == [0, 0, 0, 0, 0, 0, 6]


def test_a_group_after_a_barrier_waits_for_it_only_when_the_capture_had_reaped_it() -> None:
    """a, b; c once both were reaped (a barrier); d forked while c ran; e after c was
    reaped while d still ran: e may have needed c, d cannot have."""
    text = make_tree([[], [], [2, 3], [], [4]], [5, 6])
    children = specs(text)[1:]
    assert barriers(children) == [False, False, True, False, False, True]
    assert job_prefixes(children) == [0, 0, 2, 2, 3, 5]


def test_a_make_j1_capture_is_all_barriers_and_says_it_cannot_be_widened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    children = specs(J1)[1:]
    assert barriers(children) == [False] + [True] * 6
    assert job_prefixes(children) == [0, 1, 2, 3, 4, 5, 6]
    assert jobs_warnings(specs(J1), 1) == []
    (line,) = jobs_warnings(specs(J1), 4)
    assert "one at a time" in line and "jobs=4" in line
    assert jobs_warnings(specs(J2), 4) == []
    path = tmp_path / "j1.toml"
    path.write_text(J1)
    assert main(["run", "--workload", str(path), "--param", "jobs=4", "--cpus", "4", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{path}: make (id 1)" in err


# -- the replay --------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2, 6])
def test_make_runs_up_to_jobs_children_and_the_link_waits_for_every_compile(
    jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = replay(config(J2, 8, jobs), monkeypatch)
    assert peak_running(r, CCS) == jobs
    assert r.forked_ns[LINK] > max(r.reaped_ns[i] for i in CCS)
    # Forked in the capture's order.
    assert sorted(CCS, key=lambda i: r.forked_ns[i]) == CCS


def test_a_j1_capture_stays_serial_at_any_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    r = replay(config(J1, 8, 6), monkeypatch)
    assert peak_running(r, [*CCS, LINK]) == 1


def test_without_jobs_the_capture_is_kept_and_more_jobs_shorten_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = replay(config(J2, 8), monkeypatch)
    assert peak_running(base, CCS) == 2
    walls = [simulate(config(J2, 8, j))["makespan_ns"] for j in (1, 2, 6)]
    assert walls[0] > walls[1] > walls[2]


def test_jobs_at_the_captures_own_width_replays_the_capture_exactly() -> None:
    """Where make -j2's schedule is what the file's ``after`` says (two compiles, the
    link after both), jobs=2 makes the same run: only the config differs."""
    text = make_tree([[], []], [2, 3])
    a = simulate(config(text, 2, policy="reaper"))
    b = simulate(config(text, 2, 2, policy="reaper"))
    assert b["config"]["workload_params"]["jobs"] == 2
    a.pop("config"), b.pop("config")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_without_jobs_the_config_and_the_result_are_as_before(tmp_path: Path) -> None:
    """No ``[replay]`` and no ``--param``: the tree's parameters have no ``jobs`` key,
    so the Result is the one the replay gave before ``jobs`` existed (and the run is
    deterministic)."""
    path = tmp_path / "j2.toml"
    path.write_text(J2)
    assert "jobs" not in to_config(load_workload_file(path))[1]
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert main(["run", "--workload", str(path), "--json", "-o", str(out)]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    result = json.loads(outs[0].read_text())
    assert "jobs" not in result["config"]["workload_params"]


def test_the_replay_table_sets_jobs_and_param_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.toml"
    path.write_text(J2.replace('name = "j"\n', 'name = "j"\n\n[replay]\njobs = 6\n'))
    workload, params = to_config(load_workload_file(path))
    assert params["jobs"] == 6
    r = replay(SimConfig(cpus=8, workload=workload, workload_params=params), monkeypatch)
    assert peak_running(r, CCS) == 6
    out = tmp_path / "r.json"
    argv = ["run", "--workload", str(path), "--cpus", "8", "--param", "jobs=3", "-o", str(out)]
    assert main(argv) == 0
    assert "8 processes (j), jobs=3" in capsys.readouterr().out
    assert json.loads(out.read_text())["config"]["workload_params"]["jobs"] == 3


def test_the_lua_build_at_more_jobs_is_shorter_with_the_same_work() -> None:
    """The make -j2 capture replayed as make -j8 on 8 CPUs: the wall time shrinks,
    every process still runs and does its own user time."""
    lua = import_trace(
        str(TRACES / "lua-make-j2.strace"), str(TRACES / "lua-make-j2.bpftrace.txt"), None
    )
    workload, params = to_config(lua.spec)

    def run(jobs: int) -> dict[str, Any]:
        cfg = SimConfig(cpus=8, workload=workload, workload_params=params | {"jobs": jobs})
        return simulate(cfg)

    two, eight = run(2), run(8)
    assert eight["makespan_ns"] < 0.75 * two["makespan_ns"]
    assert 2.7e9 < eight["makespan_ns"] < 2.85e9  # docs/workloads.md: 2.77 s
    assert two["processes"]["count"] == eight["processes"]["count"] == 109
    total = "charged_user_ns_total"
    assert two["processes"][total] == eight["processes"][total]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "many"])
def test_jobs_must_be_a_positive_whole_number(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.toml"
    path.write_text(J2)
    out = tmp_path / "out.json"
    argv = ["run", "--workload", str(path), "--param", f"jobs={value}", "-o", str(out)]
    assert_usage_error(argv, "--param jobs: must be a whole number, at least 1", capsys)
    assert not out.exists()


def test_a_tree_takes_no_other_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.toml"
    path.write_text(J2)
    argv = ["run", "--workload", str(path), "--param", "parallel=2"]
    assert_usage_error(argv, "--param parallel: ", capsys)


NO_MAKE = """\
format = 1
[[process]]
id = 1
program = "/bin/sh"
user_ms = 1.0

[[process]]
id = 2
parent = 1
program = "cc"
user_ms = 1.0
"""


def test_jobs_on_a_tree_without_make_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sh.toml"
    path.write_text(NO_MAKE)
    argv = ["run", "--workload", str(path), "--param", "jobs=4"]
    assert_usage_error(argv, "--param jobs: the tree has no make process", capsys)
    path.write_text(NO_MAKE.replace("format = 1\n", "format = 1\n[replay]\njobs = 4\n"))
    with pytest.raises(WorkloadFileError, match=r"sh.toml: replay.jobs: the tree has no make"):
        load_workload_file(path)


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("[replay]\njobs = 0\n", "replay.jobs: Input should be greater than or equal to 1"),
        ("[replay]\njobs = 2.0\n", "replay.jobs: Input should be a valid integer"),
        ("[replay]\njobz = 2\n", "replay.jobz: unknown field"),
    ],
)
def test_a_bad_replay_table_names_the_field(
    table: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.toml"
    path.write_text(J2.replace('name = "j"\n', f'name = "j"\n{table}'))
    assert_usage_error(["run", "--workload", str(path)], needle, capsys)


def test_a_replay_table_is_only_for_a_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.toml"
    path.write_text("format = 1\n[replay]\njobs = 2\n[generator]\nname = 'build'\n")
    assert_usage_error(["run", "--workload", str(path)], "replay: only for a [[process]]", capsys)


def test_the_api_and_a_sweep_take_jobs_for_a_tree_and_nothing_else(tmp_path: Path) -> None:
    from exitsim.api import load_workload
    from exitsim.experiment.spec import SweepSpecError, load_sweep

    tree = tmp_path / "j2.toml"
    tree.write_text(J2)
    w = load_workload(tree, jobs=4)
    assert w.params["jobs"] == 4 and w.name == "tree"
    with pytest.raises(ValueError, match="one parameter, jobs"):
        load_workload(tree, units=4)
    spec = tmp_path / "s.toml"
    body = 'format = 1\nname = "s"\ndesigns = ["purge"]\nseeds = 1\n'
    body += 'cpus = [2]\narches = ["amd64"]\n'
    spec.write_text(body + '[workload]\nfile = "j2.toml"\nparams = { jobs = [1, 3] }\n')
    sweep = load_sweep(spec)
    assert sorted(c.workload_params["jobs"] for c in sweep.configs()) == [1, 3]
    spec.write_text(body + '[workload]\nfile = "j2.toml"\nparams = { units = 3 }\n')
    with pytest.raises(SweepSpecError, match="only parameter is jobs"):
        load_sweep(spec)
