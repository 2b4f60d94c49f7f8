"""Plots: valid PNG and SVG with the panels each figure promises, showing the result's
own numbers (distributions whole: the exit-latency CDF, lock waits by duration), one
scale rule, times for people, byte-identical for the same result (in another process
too), and a bad suffix refused before anything runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from exitsim.cli import main
from exitsim.report.plots import (
    LOG_SPAN,
    compare_figure,
    format_ns,
    ratios,
    render,
    run_figure,
    time_unit,
    wait_hist,
    write_plot,
)
from exitsim.sim import SimConfig, simulate
from exitsim.vm.uvm import PAGE_SIZE
from tests.clikit import assert_usage_error

SMALL = {"jobs": 3, "cc1_user_ms": 2}
SMALL_ARGS = ["--param", "jobs=3", "--param", "cc1_user_ms=2"]
DESIGNS = ("reaper", "purge+pmap_purge")
ARCHES = ("arm64", "amd64")
CPUS = (1, 2)


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    """A small comparison in compare's order: arch, then CPUs, then design."""
    return [
        simulate(SimConfig(policy=d, arch=a, cpus=n, workload_params=SMALL))
        for a in ARCHES
        for n in CPUS
        for d in DESIGNS
    ]


@pytest.fixture(scope="module")
def one(results: list[dict[str, Any]]) -> dict[str, Any]:
    return results[-1]


@pytest.fixture(scope="module")
def drawn(results: list[dict[str, Any]], one: dict[str, Any]) -> dict[str, bytes]:
    """The figures, drawn once for the module (drawing takes a second or so); the
    comparison as PNG only in the command-line test."""
    return {
        "compare.svg": render(results, "svg"),
        "run.svg": render(one, "svg"),
        "run.png": render(one, "png"),
    }


def _all_axes(fig: Any) -> list[Any]:
    """The axes of a figure and of its subfigures (the lanes of a step panel)."""
    return [*fig.axes, *(ax for sub in fig.subfigs for ax in _all_axes(sub))]


def _axes_by_gid(fig: Any) -> dict[str, Any]:
    return {ax.get_gid(): ax for ax in _all_axes(fig) if ax.get_gid()}


def test_compare_svg_is_valid_and_has_a_panel_per_question_and_arch(
    drawn: dict[str, bytes],
) -> None:
    svg = drawn["compare.svg"].decode()
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ids = {el.get("id") for el in root.iter()}
    for kind in ("wall", "ratio", "sys", "latency", "locks", "waits"):
        for arch in ARCHES:
            assert f"{kind}-{arch}" in ids
    for arch in ARCHES:  # a lane per design
        assert {f"held-{arch}-{i}" for i in range(len(DESIGNS))} <= ids
    # Text is drawn as paths; matplotlib keeps each string as a comment beside it.
    for text in (
        "arm64: wall time vs CPUs",
        "amd64: wall time relative to reaper",
        "amd64, 2 CPUs: sys time charged per process",
        "arm64, 2 CPUs: exit latency (CDF)",
        "arm64, 2 CPUs: lock wait by lock",
        "amd64, 2 CPUs: lock waits by duration (all locks)",
        "amd64, 2 CPUs: memory held after exit",
        "wall time (ms)",
        "wall time / reaper's (below 1: faster)",
        "charged sys time per process (ms)",
        "exit1 entry to the parent's wait4 return (log scale)",
        "one wait, in log2 buckets (log scale)",
        "held after exit (MiB)",
        "simulated time (ms)",
        "CPUs (log 2 scale)",
    ):
        assert f"<!-- {text} -->" in svg, text


def test_run_svg_has_its_six_panels(drawn: dict[str, bytes]) -> None:
    svg = drawn["run.svg"].decode()
    ids = {el.get("id") for el in ET.fromstring(svg).iter()}
    assert {"sys", "latency", "locks", "waits", "held", "backlog", "zombies"} <= ids
    for text in (
        "sys time charged per process, by command",
        "exit latency (CDF)",
        "lock wait by lock",
        "lock waits by duration, per lock",
        "memory held after exit",
        "reaper backlog (threads on deadproc) and zombies",
        "cc1",
        "kernel_lock",
    ):
        assert f"<!-- {text} -->" in svg, text
    assert "wall time vs CPUs" not in svg  # one run has one CPU count


def test_png_is_a_png_with_no_date_or_version(drawn: dict[str, bytes]) -> None:
    data = drawn["run.png"]
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes every chunk: a truncated or corrupt file raises
    assert im.format == "PNG" and im.width > 1000 and im.height > 1200
    assert im.info.get("Software") == "exitsim"
    assert "Creation Time" not in im.info
    assert b"matplotlib" not in data.lower()


@pytest.mark.parametrize("name", ["compare", "run"])
def test_svg_has_no_date_or_version(name: str, drawn: dict[str, bytes]) -> None:
    svg = drawn[f"{name}.svg"].decode()
    assert "<dc:date>" not in svg
    assert "Matplotlib v" not in svg


def test_the_panels_show_the_results_own_numbers(results: list[dict[str, Any]]) -> None:
    """Wall time per design and CPU count, and its ratio to the baseline's; a point
    per exited process at the largest CPU count; the held-after-exit series as they
    are, in MiB, as step lines, a lane per design; the lock-wait bars of each design
    summing to its total."""
    axes = _axes_by_gid(compare_figure(results))
    for arch in ARCHES:
        mine = [r for r in results if r["config"]["arch"] == arch]
        _, size = time_unit(max(r["makespan_ns"] for r in mine))
        lines = {ln.get_label(): ln for ln in axes[f"wall-{arch}"].get_lines()}
        ratio = {ln.get_label(): ln for ln in axes[f"ratio-{arch}"].get_lines()}
        base = {r["config"]["cpus"]: r["makespan_ns"] for r in mine[:: len(DESIGNS)]}
        for d in DESIGNS:
            rs = [r for r in mine if r["config"]["policy"] == d]
            assert list(lines[d].get_xdata()) == [r["config"]["cpus"] for r in rs]
            assert list(lines[d].get_ydata()) == [r["makespan_ns"] / size for r in rs]
            want = [r["makespan_ns"] / base[r["config"]["cpus"]] for r in rs]
            assert list(ratio[d].get_ydata()) == pytest.approx(want)
            assert [y for _, y in ratios(results, arch, d)] == pytest.approx(want)
        assert set(ratio[DESIGNS[0]].get_ydata()) == {1.0}
        top = [r for r in mine if r["config"]["cpus"] == max(CPUS)]
        points = sum(len(c.get_offsets()) for c in axes[f"sys-{arch}"].collections)
        assert points == sum(len(r["per_process"]) for r in top)
        for i, r in enumerate(top):
            (ln,) = axes[f"held-{arch}-{i}"].get_lines()
            series = r["series"]["held_after_exit_pages"]
            assert ln.get_drawstyle() == "steps-post"
            assert list(ln.get_ydata()) == [v * PAGE_SIZE / (1 << 20) for _, v in series]
        _, lsize = time_unit(max(s["wait_ns"] for r in top for s in r["locks"].values()))
        bars = axes[f"locks-{arch}"].containers
        for r, bar in zip(top, bars, strict=True):
            assert bar.get_label() == r["config"]["policy"]
            total = sum(s["wait_ns"] for s in r["locks"].values()) / lsize
            assert sum(b.get_height() for b in bar) == pytest.approx(total)


def test_the_exit_latency_cdf_is_the_sorted_latencies_up_to_one(
    results: list[dict[str, Any]], one: dict[str, Any]
) -> None:
    """A CDF line per design: its x values the latencies (ns) sorted, its y the share
    of processes at or below each, ending at 1.0; on a log time axis."""
    axes = _axes_by_gid(compare_figure(results))
    for arch in ARCHES:
        top = [r for r in results if r["config"]["arch"] == arch and r["config"]["cpus"] == 2]
        ax = axes[f"latency-{arch}"]
        assert ax.get_xscale() == "log"
        lines = {ln.get_label().split(":")[0]: ln for ln in ax.get_lines()}
        for r in top:
            lat = [p["exit_latency_ns"] for p in r["per_process"]]
            lat = sorted(v for v in lat if v is not None)
            ln = lines[r["config"]["policy"]]
            assert list(ln.get_xdata()) == lat
            ys = list(ln.get_ydata())
            assert ys[-1] == 1.0 and ys == sorted(ys) and len(ys) == len(lat)
            assert ln.get_drawstyle() == "steps-post"
            p = r["processes"]
            assert f"p50 {format_ns(p['exit_latency_ns_p50'])}" in ln.get_label()
            assert f"p99 {format_ns(p['exit_latency_ns_p99'])}" in ln.get_label()
    (ln, _marks) = _axes_by_gid(run_figure(one))["latency"].get_lines()
    lat = [p["exit_latency_ns"] for p in one["per_process"] if p["exit_latency_ns"] is not None]
    assert list(ln.get_xdata()) == sorted(lat)
    assert ln.get_ydata()[-1] == 1.0


def test_lock_waits_by_duration_are_the_results_log2_buckets(
    results: list[dict[str, Any]], one: dict[str, Any]
) -> None:
    """The Result counts each lock wait in a power-of-two bucket; the panel draws a
    bar per bucket with a wait in it, the count as its height, inside its bucket."""
    for r in results:
        for s in r["locks"].values():
            hist = s["wait_log2_hist"]
            assert sum(hist) <= s["contended"]
            assert not hist or hist[-1]  # no trailing zeros
            # The longest wait (its hand-off included) is in the top bucket or above.
            assert len(hist) <= s["max_wait_ns"].bit_length() + 1
    axes = _axes_by_gid(run_figure(one))
    waited = [n for n, s in one["locks"].items() if s["wait_ns"]]
    assert waited, "the run should wait for some lock"
    bars = {c.get_label().split(":")[0]: c for c in axes["waits"].containers}
    assert set(bars) == set(waited)
    for name in waited:
        hist = one["locks"][name]["wait_log2_hist"]
        assert wait_hist(one, [name]) == hist
        drawn = [(b.get_x(), b.get_height()) for b in bars[name]]
        assert [h for _, h in drawn] == [n for n in hist if n]
        for (x, _), b in zip(drawn, [b for b, n in enumerate(hist) if n], strict=True):
            assert 2.0 ** (b - 1) <= x < 2.0**b
    assert axes["waits"].get_xscale() == "log"


def test_one_scale_rule_linear_unless_the_values_span_over_100_times(
    one: dict[str, Any],
) -> None:
    """The sys-time panel is linear from 0 for this run; give one process 1000 times
    the largest sys time and it turns logarithmic, and its label says so."""
    sys_ns = [p["sys_ns"] for p in one["per_process"]]
    assert max(sys_ns) <= LOG_SPAN * min(v for v in sys_ns if v > 0)
    ax = _axes_by_gid(run_figure(one))["sys"]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    assert "log" not in ax.get_ylabel()
    big = dict(one)
    big["per_process"] = [dict(p) for p in one["per_process"]]
    big["per_process"][0]["sys_ns"] = 1000 * max(sys_ns)
    ax = _axes_by_gid(run_figure(big))["sys"]
    assert ax.get_yscale() in ("log", "symlog")
    assert "log scale" in ax.get_ylabel()


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0"),
        (7, "7 ns"),
        (950, "950 ns"),
        (1_000, "1.00 us"),
        (12_345, "12.3 us"),
        (999_700, "1.00 ms"),
        (2_400_000, "2.40 ms"),
        (123_456_789, "123 ms"),
        (11_345_959_000, "11.3 s"),
        (1_234_000_000_000, "1,234 s"),
    ],
)
def test_times_are_formatted_in_the_unit_they_read_best_in(ns: int, text: str) -> None:
    assert format_ns(ns) == text


def test_run_figure_groups_sys_time_by_command(one: dict[str, Any]) -> None:
    axes = _axes_by_gid(run_figure(one))
    labels = [t.get_text() for t in axes["sys"].get_xticklabels()]
    assert sorted(labels) == sorted({p["comm"] for p in one["per_process"]})
    points = sum(len(c.get_offsets()) for c in axes["sys"].collections)
    assert points == len(one["per_process"])
    locks = [t.get_text() for t in axes["locks"].get_yticklabels()]
    assert sorted(locks) == sorted(one["locks"])
    for gid, key in (("backlog", "reaper_backlog"), ("zombies", "zombies")):
        (ln,) = axes[gid].get_lines()
        assert ln.get_drawstyle() == "steps-post"
        assert list(ln.get_ydata()) == [v for _, v in one["series"][key]]


def test_the_same_result_gives_byte_identical_plots(
    results: list[dict[str, Any]], drawn: dict[str, bytes]
) -> None:
    """Drawn again in this process (PNG is compared across processes below)."""
    assert render(results, "svg") == drawn["compare.svg"]


def test_another_process_draws_the_same_bytes(
    tmp_path: Path, one: dict[str, Any], drawn: dict[str, bytes]
) -> None:
    """A fresh interpreter (its own string hashing and caches) writes the same files
    from the result read back from JSON, as ``run -o`` writes it."""
    src = tmp_path / "r.json"
    src.write_text(json.dumps(one, sort_keys=True, indent=1))
    code = (
        "import json, sys\n"
        "from exitsim.report.plots import write_plot\n"
        "r = json.load(open(sys.argv[1]))\n"
        "write_plot(r, sys.argv[2] + '.svg')\n"
        "write_plot(r, sys.argv[2] + '.png')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "there")],
        check=True,
        timeout=120,
    )
    for fmt in ("svg", "png"):
        assert (tmp_path / f"there.{fmt}").read_bytes() == drawn[f"run.{fmt}"], fmt


def test_write_plot_leaves_only_the_file(tmp_path: Path, one: dict[str, Any]) -> None:
    write_plot(one, str(tmp_path / "run.SVG"))
    assert [p.name for p in tmp_path.iterdir()] == ["run.SVG"]
    assert (tmp_path / "run.SVG").read_bytes().startswith(b"<?xml")


def test_write_plot_refuses_other_suffixes(tmp_path: Path, one: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        write_plot(one, str(tmp_path / "run.pdf"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--plot", "out.jpg"],
        ["run", "--plot", "out"],
        ["compare", "--plot", "out.pdf"],
    ],
)
def test_cli_refuses_a_bad_plot_suffix_before_any_run(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_run(*args: Any, **kw: Any) -> None:
        raise AssertionError("a run started")

    monkeypatch.setattr("exitsim.sim.simulate", no_run)
    monkeypatch.setattr("exitsim.sim.simulate_traced", no_run)
    monkeypatch.chdir(tmp_path)
    assert_usage_error(argv, ".png or .svg", capsys)
    assert list(tmp_path.iterdir()) == []


def test_run_plot_writes_an_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.svg"
    argv = ["run", "--cpus", "2", "--plot", str(out), *SMALL_ARGS]
    assert main(argv) == 0
    assert f"plot: {out}" in capsys.readouterr().out
    svg = out.read_bytes()
    ET.fromstring(svg)
    assert b"<!-- memory held after exit -->" in svg


def test_compare_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.png"
    argv = ["compare", "--policies", ",".join(DESIGNS), "--arches", "amd64", "--cpus", "1,2"]
    argv += ["--workers", "1", "--plot", str(out), "--json", *SMALL_ARGS]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out) as im:
        im.load()
        assert im.info.get("Software") == "exitsim"
