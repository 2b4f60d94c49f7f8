"""The model against the host: the microbenchmarks run in the model (``micro.py``) with
a profile, each figure set beside what the host measured, with the error.

A row says what it is to the fit: ``fits KEYS`` when ``hostprofile`` sets those keys
from it (with the profile it wrote the error is rounding, by construction), ``sets
KEY`` for a figure that is a key's value directly, ``prediction`` for a figure no key
was fitted to. Two rows are the targets, to be within ``TARGET`` (20%): teardown per
MiB and fork+exit latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exitsim.calibrate.hostprofile import TEARDOWN_KEYS
from exitsim.calibrate.measured import describe_figure
from exitsim.calibrate.micro import describe, model_figures
from exitsim.calibrate.stats import relative_error

if TYPE_CHECKING:
    from exitsim.calibrate.measured import Measurements
    from exitsim.calibrate.stats import Figure
    from exitsim.machine.costs import CostProfile

#: The targets' largest error.
TARGET = 0.20


@dataclass(frozen=True, slots=True)
class Row:
    """One figure: the host's (median and spread), the model's, the error."""

    name: str
    label: str
    unit: str
    measured: Figure
    predicted: float
    role: str
    target: bool

    @property
    def error(self) -> float | None:
        return relative_error(self.predicted, self.measured.median)

    @property
    def ok(self) -> bool | None:
        """Within TARGET, for a target row; None for the others."""
        if not self.target:
            return None
        e = self.error
        return e is not None and abs(e) <= TARGET

    def as_dict(self) -> dict[str, Any]:
        e = self.error
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "measured": self.measured.as_dict(),
            "predicted": round(self.predicted, 1),
            "error": None if e is None else round(e, 4),
            "role": self.role,
            "target": self.target,
        }


def targets_met(rows: list[Row]) -> bool:
    """Every target row within TARGET."""
    return all(r.ok for r in rows if r.target)


def _rows_wanted(meas: Measurements) -> list[tuple[str, str, str, bool]]:
    """(figure, label, role, target), in table order."""
    rows = [
        (
            "teardown_per_mib_ns",
            "teardown per MiB (slope of exit latency)",
            "fits " + ", ".join(TEARDOWN_KEYS),
            True,
        ),
        (
            "fork_exit_unshared_ns",
            "fork+exit, less Linux's PTE copy at fork",
            "fits fork_ns",
            True,
        ),
        ("fault_per_page_ns", "zero-fill fault per page", "fits fault_ns", False),
        ("exec_minus_fork_ns", "fork+exec+exit less fork+exit", "fits exec_ns", False),
        ("zero_per_page_ns", "zeroing a page (memset)", "sets page_zero_ns", False),
        ("copy_per_page_ns", "copying a page (memmove)", "sets page_copy_ns", False),
        ("fork_exit_ns", "fork+exit as measured", "prediction", False),
        ("exit_fixed_ns", "exit latency, nothing written", "prediction", False),
        (
            "exit_fixed_unshared_ns",
            "exit latency, nothing written, less Linux's PTE drop",
            "prediction",
            False,
        ),
    ]
    rows += [
        (f"exit_ns@{m}", f"exit latency, child wrote {m} MiB", "prediction", False)
        for m in meas.doc["mib"]
    ]
    rows += [
        ("cow_fault_per_page_ns", "copy-on-write fault per page", "prediction", False),
        ("cow_fork_per_page_ns", "fork latency per parent page", "prediction", False),
        ("file_fault_per_page_ns", "read fault per page, cached file", "prediction", False),
        ("exec_ns", "fork+exec+exit", "prediction", False),
    ]
    counts = sorted(int(c) for c in meas.doc["samples"]["concurrent"])
    rows += [
        (
            f"concurrent_ratio@{c}",
            f"exit latency, {c} exiting at once / alone",
            "prediction",
            False,
        )
        for c in counts[1:]
    ]
    return rows


def _direct(profile: CostProfile) -> dict[str, float]:
    """Figures that are a key's value as they stand."""
    return {
        "zero_per_page_ns": float(profile.costs.page_zero_ns),
        "copy_per_page_ns": float(profile.costs.page_copy_ns),
    }


def check_rows(meas: Measurements, profile: CostProfile, design: str = "linux") -> list[Row]:
    """Every figure the host measured and the model predicts, with ``profile``."""
    model = model_figures(meas.spec(design), profile) | _direct(profile)
    # The model's fork copies no page-table entries, as OpenBSD's does not: the same
    # fork+exit is the host's less Linux's copy and drop of them.
    if "fork_exit_ns" in model:
        model["fork_exit_unshared_ns"] = model["fork_exit_ns"]
    if "exit_fixed_ns" in model:
        model["exit_fixed_unshared_ns"] = model["exit_fixed_ns"]
    out = []
    for name, label, role, target in _rows_wanted(meas):
        m = meas.figures.get(name)
        p = model.get(name)
        if m is None or p is None:
            continue
        out.append(Row(name, label, describe_figure(name)[0], m, p, role, target))
    return out


def check_doc(
    meas: Measurements,
    profile: CostProfile,
    design: str = "linux",
    rows: list[Row] | None = None,
) -> dict[str, Any]:
    """The comparison as plain data: the profile, the model's benchmarks, the rows
    (``rows`` if they are at hand, else run)."""
    if rows is None:
        rows = check_rows(meas, profile, design)
    return {
        "profile": profile.path,
        "description": profile.description,
        "design": design,
        "model": describe(meas.spec(design)),
        "target": TARGET,
        "rows": [r.as_dict() for r in rows],
        "targets_met": targets_met(rows),
    }
