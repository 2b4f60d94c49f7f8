"""The claims table of docs/claims.md holds: the model, run again over the same matrix
(every claim, arch, CPU count, reading of the reaper, cost assumption and seed), gives
every ratio and verdict that docs/claims.json records. A change to the model that
moves a conclusion fails here until the docs say what it now is
(``exitsim claims --workers 2 -o docs/claims.json``, then docs/claims.md).

The matrix is 600-odd short runs; they go over a process pool of two. Plus the
evaluation itself on made-up results, so the verdict rules are held on their own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from exitsim.report import claims as cl

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def table() -> list[dict[str, Any]]:
    configs = cl.needed_configs()
    with mp.get_context("spawn").Pool(2) as pool:
        results = cl.run_all(configs, pool.map)
    return [c.as_dict() for c in cl.evaluate(results)]


def test_every_cell_of_docs_claims_json_is_what_the_model_gives(
    table: list[dict[str, Any]],
) -> None:
    recorded = json.loads((DOCS / "claims.json").read_text(encoding="utf-8"))
    assert len(table) == len(recorded)
    for got, want in zip(table, recorded, strict=True):
        assert got == want


def test_docs_claims_md_shows_the_recorded_table() -> None:
    recorded = json.loads((DOCS / "claims.json").read_text(encoding="utf-8"))
    cells = [cl.Cell(**c) for c in recorded]
    md = (DOCS / "claims.md").read_text(encoding="utf-8")
    assert cl.markdown(cells) in md


def test_every_claim_is_checked_against_every_reading_of_the_reaper_it_concerns(
    table: list[dict[str, Any]],
) -> None:
    for claim in cl.CLAIMS:
        rows = [c for c in table if c["claim"] == claim.key]
        want = len(claim.arches) * len(cl.CPUS) * len(claim.assumptions)
        want *= len(claim.baselines())
        assert len(rows) == want
        if claim.baseline == "*":
            assert {c["baseline"] for c in rows} == set(cl.BASELINES)


# -- the verdict rules, on made-up ratios --------------------------------------------


@pytest.mark.parametrize(
    ("direction", "ratios", "want"),
    [
        (cl.UP, [1.2, 1.3, 1.25], "holds"),
        (cl.UP, [0.8, 0.7, 0.75], "fails"),
        (cl.UP, [1.2, 0.8, 1.0], "not shown"),
        (cl.DOWN, [0.5, 0.6, 0.55], "holds"),
        (cl.DOWN, [1.5, 1.6, 1.55], "fails"),
    ],
)
def test_a_verdict_needs_the_whole_interval_on_one_side_of_one(
    direction: str, ratios: list[float], want: str
) -> None:
    _, lo, hi = cl.ratio_interval(ratios)
    assert cl.verdict(direction, lo, hi) == want


def test_the_interval_is_taken_on_the_logs_of_the_ratios() -> None:
    mean, lo, hi = cl.ratio_interval([2.0, 0.5])
    assert mean == pytest.approx(1.0)
    assert lo * hi == pytest.approx(1.0)
    one = cl.ratio_interval([1.5])
    assert one == (pytest.approx(1.5),) * 3


def test_an_override_scales_the_profile_value_and_is_recorded() -> None:
    from exitsim.machine.costs import builtin_profile

    a = cl.Assumption("x", {"tlbi_per_sender_ns": 0.25})
    base = builtin_profile("arm64").costs.tlbi_per_sender_ns
    assert a.overrides("arm64") == {"tlbi_per_sender_ns": round(base * 0.25)}
    cfg = cl.config("purge", "arm64", 4, 0, {"jobs": 2}, a)
    assert cfg.as_dict()["cost_overrides"] == {"tlbi_per_sender_ns": round(base * 0.25)}
