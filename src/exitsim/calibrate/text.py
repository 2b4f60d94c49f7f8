"""The calibration's tables as text: what the host measured, and the model beside it.
Formats only; the figures come from ``measured`` and ``hostcheck``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.calibrate.measured import describe_figure

if TYPE_CHECKING:
    from exitsim.calibrate.hostcheck import Row
    from exitsim.calibrate.measured import Measurements


def num(x: float) -> str:
    """A number for a table or a source: grouped whole numbers from 100, one decimal
    below."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def header_lines(meas: Measurements) -> list[str]:
    """The OSTEP-style echo: what was measured where, one ``# key value`` a line."""
    d = meas.doc
    lay = d["parent"]
    return [
        f"# machine {meas.machine_text()}",
        f"# date {meas.date}",
        f"# load {meas.load_text()}",
        f"# repeats {d['repeats']} (+{d['warmup']} warm-up), sizes {d['mib']} MiB, "
        f"{d['seconds']} s",
        f"# parent {lay['entries']} mappings, {lay['anon_pages']} anonymous and "
        f"{lay['file_pages']} file pages resident",
    ]


def figures_table(meas: Measurements) -> list[str]:
    """Every figure: median, p10-p90, interquartile range, unit, what it is."""
    rows = [("figure", "median", "p10..p90", "IQR", "unit", "what")]
    for name, f in meas.figures.items():
        unit, what = describe_figure(name)
        rows.append((name, num(f.median), f"{num(f.p10)}..{num(f.p90)}", num(f.iqr), unit, what))
    return _aligned(rows, right=(1, 2, 3))


def check_table(rows: list[Row]) -> list[str]:
    """The model against the host: measured (with spread), predicted, error, role."""
    out = [("figure", "measured", "p10..p90", "model", "error", "unit", "role")]
    for r in rows:
        e = r.error
        err = "-" if e is None else f"{100 * e:+.1f}%"
        if r.target:
            err += " ok" if r.ok else " OFF"
        out.append(
            (
                r.label,
                num(r.measured.median),
                f"{num(r.measured.p10)}..{num(r.measured.p90)}",
                num(r.predicted),
                err,
                r.unit,
                r.role,
            )
        )
    return _aligned(out, right=(1, 2, 3, 4))


def _aligned(rows: list[tuple[str, ...]], right: tuple[int, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return lines
