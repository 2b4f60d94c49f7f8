"""Plots: valid PNG and SVG with the panels each figure promises, showing the result's
own numbers, byte-identical for the same result (in another process too), and a bad
suffix refused before anything runs."""

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
from exitsim.report.plots import compare_figure, render, run_figure, write_plot
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


def _axes_by_gid(fig: Any) -> dict[str, Any]:
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def test_compare_svg_is_valid_and_has_a_panel_per_question_and_arch(
    drawn: dict[str, bytes],
) -> None:
    svg = drawn["compare.svg"].decode()
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ids = {el.get("id") for el in root.iter()}
    for kind in ("wall", "sys", "locks", "held"):
        for arch in ARCHES:
            assert f"{kind}-{arch}" in ids
    # Text is drawn as paths; matplotlib keeps each string as a comment beside it.
    for text in (
        "arm64: wall time vs CPUs",
        "amd64, 2 CPUs: sys time charged per process",
        "arm64, 2 CPUs: lock wait by lock",
        "amd64, 2 CPUs: memory held after exit",
        "wall time (ms)",
        "charged sys time per process (ms)",
        "held after exit (MiB)",
        "simulated time (ms)",
        "CPUs",
    ):
        assert f"<!-- {text} -->" in svg, text


def test_run_svg_has_its_four_panels(drawn: dict[str, bytes]) -> None:
    svg = drawn["run.svg"].decode()
    ids = {el.get("id") for el in ET.fromstring(svg).iter()}
    assert {"sys", "locks", "held", "backlog"} <= ids
    for text in (
        "sys time charged per process, by command",
        "lock wait by lock",
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
    assert im.format == "PNG" and im.width > 1000 and im.height > 800
    assert im.info.get("Software") == "exitsim"
    assert "Creation Time" not in im.info
    assert b"matplotlib" not in data.lower()


@pytest.mark.parametrize("name", ["compare", "run"])
def test_svg_has_no_date_or_version(name: str, drawn: dict[str, bytes]) -> None:
    svg = drawn[f"{name}.svg"].decode()
    assert "<dc:date>" not in svg
    assert "Matplotlib v" not in svg


def test_the_panels_show_the_results_own_numbers(results: list[dict[str, Any]]) -> None:
    """Wall time per design and CPU count; a point per exited process at the largest
    CPU count; the held-after-exit series as they are, in MiB; the stacked lock waits
    summing to each design's total."""
    axes = _axes_by_gid(compare_figure(results))
    for arch in ARCHES:
        mine = [r for r in results if r["config"]["arch"] == arch]
        lines = {ln.get_label(): ln for ln in axes[f"wall-{arch}"].get_lines()}
        for d in DESIGNS:
            rs = [r for r in mine if r["config"]["policy"] == d]
            assert list(lines[d].get_xdata()) == [r["config"]["cpus"] for r in rs]
            assert list(lines[d].get_ydata()) == [r["makespan_ns"] / 1e6 for r in rs]
        top = [r for r in mine if r["config"]["cpus"] == max(CPUS)]
        points = sum(len(c.get_offsets()) for c in axes[f"sys-{arch}"].collections)
        assert points == sum(len(r["per_process"]) for r in top)
        held = axes[f"held-{arch}"].get_lines()
        for ln, r in zip(held, top, strict=True):
            series = r["series"]["held_after_exit_pages"]
            assert list(ln.get_ydata()) == [v * PAGE_SIZE / (1 << 20) for _, v in series]
        bars = axes[f"locks-{arch}"].patches
        for i, r in enumerate(top):
            stack = sum(b.get_height() for b in bars if round(b.get_x() + b.get_width() / 2) == i)
            total = sum(s["wait_ns"] for s in r["locks"].values()) / 1e6
            assert stack == pytest.approx(total)


def test_run_figure_groups_sys_time_by_command(one: dict[str, Any]) -> None:
    axes = _axes_by_gid(run_figure(one))
    labels = [t.get_text() for t in axes["sys"].get_xticklabels()]
    assert sorted(labels) == sorted({p["comm"] for p in one["per_process"]})
    points = sum(len(c.get_offsets()) for c in axes["sys"].collections)
    assert points == len(one["per_process"])
    locks = [t.get_text() for t in axes["locks"].get_yticklabels()]
    assert sorted(locks) == sorted(one["locks"])


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
