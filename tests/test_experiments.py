"""docs/experiments.md: the worked sweep's table is what the sweep gives today, row
for row, and the spec it names is the one in docs/sweeps/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from exitsim.experiment.frame import to_frame
from exitsim.experiment.report import metric_specs, summarize

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "experiments.md"
SPEC = ROOT / "docs" / "sweeps" / "tlbi-slope.toml"
FIGURES = (
    "makespan_ns",
    "processes.wait4_sys_ns_total",
    "processes.exit_latency_ns_p50",
    "tlb.broadcasts",
)


def _ratio(r: dict[str, Any]) -> str:
    if r["lo"] == r["hi"]:
        return f"{r['mean']:.3f}"
    return f"{r['mean']:.3f} [{r['lo']:.3f}..{r['hi']:.3f}]"


def worked_rows(results: list[dict[str, Any]]) -> list[str]:
    """The worked sweep's table rows as docs/experiments.md has them."""
    frame = to_frame(results)
    metrics = metric_specs(list(FIGURES), list(frame.columns))
    summary = summarize(frame, "reaper", metrics, ["reaper", "purge", "purge+pmap_purge"])
    rows = []
    for c in summary["cells"]:
        if c["policy"] == "reaper":
            continue
        ratios = " | ".join(_ratio(c["figures"][f]["ratio"]) for f in FIGURES)
        rows.append(f"| {c['cpus']} | {c['cost.tlbi_per_sender_ns']} | {c['policy']} | {ratios} |")
    return rows


def doc_rows() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- worked-sweep -->")[1]
    return [line for line in block.splitlines() if re.match(r"\| \d", line)]


@pytest.mark.slow
def test_the_worked_sweeps_table_is_what_the_sweep_gives(tmp_path: Path) -> None:
    from exitsim import sweep

    results = sweep(SPEC, tmp_path / "tlbi.sqlite", workers=2)
    assert len(results) == 90
    assert worked_rows(results) == doc_rows()


def test_the_doc_runs_the_spec_in_docs_sweeps() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "exitsim sweep docs/sweeps/tlbi-slope.toml" in text
    assert len(doc_rows()) == 12
