"""The Python API (docs/api.md): the example there runs as it stands, and each
function does what the command line does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import exitsim
from exitsim import SimConfig, Workload, compare, load_workload, simulate
from exitsim.sim import simulate as sim_simulate

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_the_example_in_docs_api_md_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    exec(compile(blocks[1], str(DOC), "exec"), {"__name__": "docs_api"})
    out = capsys.readouterr().out
    assert out.startswith("wall ")
    assert "reaper 2 processes" in out and "purge+pmap_purge 2 processes" in out


def test_the_top_level_names() -> None:
    assert set(exitsim.__all__) == {
        "SimConfig",
        "Workload",
        "compare",
        "load_workload",
        "simulate",
        "sweep",
        "to_frame",
    }


def test_simulate_is_sim_simulate_with_fields_replaced() -> None:
    cfg = SimConfig(policy="purge", arch="arm64", cpus=2, workload_params={"jobs": 2})
    a = simulate(policy="purge", arch="arm64", cpus=2, workload_params={"jobs": 2})
    assert json.dumps(a, sort_keys=True) == json.dumps(sim_simulate(cfg), sort_keys=True)


def test_a_generator_by_name_takes_its_params_under_the_configs() -> None:
    w = load_workload("forkstorm", mode="exec")
    assert w == Workload("forkstorm", {"mode": "exec"}, None)
    r = simulate(workload=w, cpus=2, workload_params={"iterations": 8})
    assert r["config"]["workload"] == "forkstorm"
    assert r["config"]["workload_params"] == {"mode": "exec", "iterations": 8}


def test_compare_runs_in_the_command_lines_order() -> None:
    rs = compare(["reaper", "purge"], ["amd64"], [2, 3], seeds=[0, 1], workload_params={"jobs": 2})
    order = [(r["config"]["cpus"], r["config"]["seed"], r["config"]["policy"]) for r in rs]
    assert order == [
        (2, 0, "reaper"), (2, 0, "purge"), (2, 1, "reaper"), (2, 1, "purge"),
        (3, 0, "reaper"), (3, 0, "purge"), (3, 1, "reaper"), (3, 1, "purge"),
    ]  # fmt: skip


def test_a_bad_workload_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("format = 1\n[[process]]\nid = 0\n")
    with pytest.raises(ValueError) as e:
        load_workload(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
