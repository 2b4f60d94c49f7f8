"""``--seeds`` on run and compare: its forms and bad forms, one Result per seed in a
JSON that is the same every time, tables whose means and ratios are the Results' own
(a ratio paired by seed, as ``claims.ratio_interval`` gives it), nothing changed
without it, and plots and the HTML report that take a multi-seed file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rich.console import Console

from exitsim import api
from exitsim.cli import main
from exitsim.report.claims import interval, ratio, ratio_interval
from exitsim.report.compare import METRICS, compare_tables, fmt_value, metric
from exitsim.report.plots import seed_ratios
from exitsim.report.seeds import common_seeds, group_runs, seed_count, seeds_text
from tests.clikit import assert_usage_error

SMALL = ["--param", "jobs=4"]
DESIGNS = ("reaper", "purge")
CMP = ["compare", "--policies", ",".join(DESIGNS), "--arches", "arm64", "--cpus", "2,4", *SMALL]
RUN = ["run", "--policy", "purge", "--cpus", "2", "--param", "jobs=2", "--workers", "1"]


def _main(argv: list[str], columns: int = 400) -> tuple[int, str]:
    """``main`` with standard output captured, as wide as ``columns``."""
    out = io.StringIO()
    with mock.patch.dict(os.environ, {"COLUMNS": str(columns)}), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A three-seed comparison: its JSON file, its results, its terminal output, and
    its plot."""
    d = tmp_path_factory.mktemp("seeds")
    code, out = _main(
        [*CMP, "--seeds", "3", "-q", "-o", str(d / "c.json"), "--plot", str(d / "c.svg")]
    )
    assert code == 0
    return {
        "dir": d,
        "path": d / "c.json",
        "results": json.loads((d / "c.json").read_text()),
        "out": out,
    }


# -- the forms of --seeds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("2", [0, 1]), ("1..3", [1, 2, 3]), ("5,2", [5, 2]), (" 4..4 ", [4]), ("0,1", [0, 1])],
)
def test_the_forms_of_seeds(
    text: str, seeds: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*RUN, "--seeds", text, "--json"]) == 0
    rs = json.loads(capsys.readouterr().out)
    assert [r["config"]["seed"] for r in rs] == seeds
    assert {r["config"]["policy"] for r in rs} == {"purge"}


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize(
    "text", ["0", "x", "3..1", "1,", "1,1", "1,01", "..3", "1.5", "", "-1..2", "2..x", "99999"]
)
def test_bad_seeds_are_one_line_naming_seeds(
    command: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error([command, "--seeds", text, *SMALL], "--seeds", capsys)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["run", "--seeds", "2", "-s", "1"], "--seed and --seeds"),
        (["compare", "--seed", "3", "--seeds", "2"], "--seed and --seeds"),
        (["run", "--seeds", "2", "--trace", "t.pftrace"], "--trace"),
        (["run", "--seeds", "2", "--folded", "f.folded"], "--folded"),
        (["compare", "--seeds", "2", "--folded", "f.folded"], "--folded"),
    ],
)
def test_seeds_refuse_what_follows_one_run(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with contextlib.chdir(tmp_path):
        assert_usage_error([*extra, *SMALL], needle, capsys)
        assert not list(tmp_path.iterdir())


def test_seeds_text_reads_back_as_the_same_seeds() -> None:
    assert seeds_text([0, 1, 2]) == "0..2"
    assert seeds_text([7]) == "7..7"
    assert seeds_text([9, 3, 5]) == "3,5,9"


# -- the JSON ------------------------------------------------------------------------


def test_the_json_has_one_result_per_seed_in_compares_order(multi: dict[str, Any]) -> None:
    rs = multi["results"]
    got = [(r["config"]["cpus"], r["config"]["seed"], r["config"]["policy"]) for r in rs]
    assert got == [(n, s, d) for n in (2, 4) for s in (0, 1, 2) for d in DESIGNS]
    want = api.compare(DESIGNS, ("arm64",), (2, 4), seeds=(0, 1, 2), workload_params={"jobs": 4})
    assert multi["path"].read_text() == json.dumps(want, sort_keys=True, indent=1) + "\n"


def test_the_json_is_the_same_bytes_every_time(multi: dict[str, Any]) -> None:
    again = multi["dir"] / "again.json"
    assert _main([*CMP, "--seeds", "0..2", "-q", "--workers", "1", "-o", str(again)])[0] == 0
    assert again.read_bytes() == multi["path"].read_bytes()


def test_run_seeds_writes_a_result_per_seed_and_a_table_of_means(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, text = _main([*RUN, "--seeds", "3", "-q", "-o", str(out)])
    assert code == 0
    rs = json.loads(out.read_text())
    assert [r["config"]["seed"] for r in rs] == [0, 1, 2]
    assert "# seeds 0..2" in text and "3 seeds (0..2)" in text and "95% interval" in text
    walls = [r["makespan_ns"] / 1e6 for r in rs]
    mean, lo, hi = interval(walls)
    row = next(line for line in text.splitlines() if "wall ms" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells == [
        "wall ms",
        fmt_value(mean),
        f"{fmt_value(lo)} .. {fmt_value(hi)}",
        fmt_value(min(walls)),
        fmt_value(max(walls)),
    ]
    assert _main([*RUN, "--seeds", "3", "-q", "-o", str(tmp_path / "again.json")])[0] == 0
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes()


# -- the table -----------------------------------------------------------------------


def _table_rows(out: str, title: str) -> tuple[list[str], dict[str, list[list[str]]]]:
    """The headings of the table titled ``title`` and, per design, its lines of cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    heads: list[str] = []
    rows: dict[str, list[list[str]]] = {}
    design = ""
    for line in lines[start + 1 :]:
        if line.startswith("┃") and not heads:
            heads = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            design = cells[0] or design
            rows.setdefault(design, []).append(cells[1:])
        elif line.startswith("└"):
            break
    return heads[1:], rows


def test_the_tables_ratios_are_paired_by_seed_as_ratio_interval_gives(
    multi: dict[str, Any],
) -> None:
    rs = multi["results"]
    assert "2 seeds" not in multi["out"]
    for cpus in (2, 4):
        title = f"arm64, {cpus} CPUs, workload build, 3 seeds: mean ±95% interval; ratio to reaper"
        heads, rows = _table_rows(multi["out"], title)
        assert heads == [m[0] for m in METRICS]
        by = {
            (r["config"]["policy"], r["config"]["seed"]): r
            for r in rs
            if r["config"]["cpus"] == cpus
        }
        (base_line,) = rows["reaper"]
        means, ratios = rows["purge"]
        for (_, path, div), b_cell, mean_cell, ratio_cell in zip(
            METRICS, base_line, means, ratios, strict=True
        ):
            mine = [metric(by["purge", s], path) for s in (0, 1, 2)]
            base = [metric(by["reaper", s], path) for s in (0, 1, 2)]
            m, lo, hi = interval(mine)
            half = fmt_value((hi - lo) / 2 / div) if hi > lo else "0"
            assert mean_cell == f"{fmt_value(m / div)} ±{half}"
            assert b_cell.startswith(fmt_value(interval(base)[0] / div) + " ±")
            if not any(base):
                assert ratio_cell == "-"
                continue
            q, qlo, qhi = ratio_interval([ratio(a, b) for a, b in zip(mine, base, strict=True)])
            assert ratio_cell == f"{q:.2f} [{qlo:.2f}..{qhi:.2f}]"


def test_the_verdict_is_over_every_seed(multi: dict[str, Any]) -> None:
    assert "arm64, 4 CPUs (3 seeds, 95% intervals), against reaper:" in multi["out"]
    row = next(line for line in multi["out"].splitlines() if line.startswith("  purge "))
    by = {
        (r["config"]["policy"], r["config"]["seed"]): r
        for r in multi["results"]
        if r["config"]["cpus"] == 4
    }
    q, _, _ = ratio_interval(
        [by["purge", s]["makespan_ns"] / by["reaper", s]["makespan_ns"] for s in (0, 1, 2)]
    )
    assert row.split(" wall ")[1].startswith(f"{(q - 1) * 100:+.1f}% [")


@pytest.mark.parametrize("width", [60, 100, 160])
def test_narrow_terminals_keep_two_line_cells_whole(multi: dict[str, Any], width: int) -> None:
    console = Console(width=width, record=True, force_terminal=False)
    for t in compare_tables(multi["results"], "reaper", width):
        console.print(t)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "wall ms" in text
    ratio_lines = [ln for ln in text.splitlines() if ".." in ln]
    assert ratio_lines
    for ln in ratio_lines:  # every ratio whole on its line, never wrapped
        cells = [c.strip() for c in ln.strip("│").split("│")[1:]]
        assert all(re.fullmatch(r"\S+ \[\S+\.\.\S+\]", c) for c in cells), ln


# -- without --seeds -----------------------------------------------------------------


def test_without_seeds_compare_is_as_before() -> None:
    argv = ["compare", "--arches", "amd64", "--cpus", "2,4", "--workers", "1", *SMALL]
    code, text = _main([*argv, "--json"])
    assert code == 0
    want = api.compare(arches=("amd64",), cpus=(2, 4), workload_params={"jobs": 4})
    assert text == json.dumps(want, sort_keys=True, indent=1) + "\n"
    code, table = _main([*argv, "-q"])
    assert "amd64, 4 CPUs, workload build (ratio to reaper)" in table
    assert "seeds" not in table and "±" not in table and "# seed 0" in table
    assert _main([*argv, "--seeds", "1", "--json"])[1] == text


def test_without_seeds_run_writes_one_result() -> None:
    code, text = _main([*RUN, "--json"])
    assert code == 0 and json.loads(text)["config"]["seed"] == 0


# -- plots and the report ------------------------------------------------------------


def test_the_plot_of_several_seeds_draws_paired_ratios(multi: dict[str, Any]) -> None:
    rs = multi["results"]
    svg = (multi["dir"] / "c.svg").read_text()
    assert svg.lstrip().startswith("<?xml")
    for said in ("3 seeds (0..2)", "95% interval", "seeds pooled", "one seed drawn"):
        assert said in svg
    by = {(r["config"]["cpus"], r["config"]["policy"], r["config"]["seed"]): r for r in rs}
    for cpus, est in seed_ratios(rs, "arm64", "purge"):
        q = ratio_interval(
            [
                by[cpus, "purge", s]["makespan_ns"] / by[cpus, "reaper", s]["makespan_ns"]
                for s in (0, 1, 2)
            ]
        )
        assert (est.mean, est.lo, est.hi) == pytest.approx(q)


def test_the_report_of_several_seeds_shows_means_and_every_seed(multi: dict[str, Any]) -> None:
    page = multi["dir"] / "c.html"
    code, _ = _main(["report", str(multi["path"]), "-o", str(page)])
    assert code == 0
    html = page.read_text()
    assert "3 seeds (0..2)" in html and "--seeds 0..2" in html
    assert "<th" in html and ">seed</th>" in html
    _, rows = _table_rows(multi["out"], "arm64, 4 CPUs, workload build, 3 seeds")
    wall_ratio = rows["purge"][1][0]
    assert f'<span class="ratio">({wall_ratio})</span>' in html
    for s in (0, 1, 2):
        assert f"arm64, 4 CPUs, purge, seed {s}</summary>" in html


def test_a_multi_seed_file_groups_by_config_less_seed(multi: dict[str, Any]) -> None:
    rs = multi["results"]
    groups = group_runs(rs)
    assert [(g.config["cpus"], g.design, g.seeds) for g in groups] == [
        (n, d, [0, 1, 2]) for n in (2, 4) for d in DESIGNS
    ]
    assert seed_count(rs) == 3 and common_seeds(rs) == [0, 1, 2]
    assert seed_count(rs[:1]) == 1
