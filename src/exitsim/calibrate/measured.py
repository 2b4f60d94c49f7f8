"""From the host's samples (the document ``host.py`` prints) to named figures: medians
with their spread, costs per page as slopes, and what the model needs to run the same
benchmarks (``micro.MicroSpec``).

Samples of one benchmark variant are in repeat order, one per repeat, so the variants
of a repeat pair up: a slope over sizes is fitted per repeat and its median taken,
and so is a difference of two benchmarks. A document read from a file is checked:
anything missing or of the wrong kind is refused in one line naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exitsim.calibrate.micro import MIB_PAGES, Layout, MicroSpec
from exitsim.calibrate.stats import Figure, figure, median, slopes_by_repeat

#: The format of the host document this module reads (host.py ``FORMAT``).
HOST_FORMAT = 1
PAGE = 4096

#: What each figure is, for tables and the JSON (unit, words).
FIGURES: dict[str, tuple[str, str]] = {
    "fork_exit_ns": ("ns", "fork+exit latency: fork to wait4's return (this parent)"),
    "fork_exit_per_parent_page_ns": (
        "ns/page",
        "fork+exit latency per page the parent has written (Linux copies and drops its PTEs)",
    ),
    "fork_exit_unshared_ns": (
        "ns",
        "fork+exit latency less Linux's PTE copy and drop of the parent's resident pages",
    ),
    "exit_per_parent_page_ns": (
        "ns/page",
        "the exit part of fork+exit per page the parent has written (Linux drops the PTEs)",
    ),
    "child_faults": ("faults", "page faults the fork+exit child took (CPython after fork)"),
    "parent_faults": ("faults", "page faults the parent took from fork to wait4's return"),
    "fault_per_page_ns": ("ns/page", "zero-fill fault: first write less second, per page"),
    "write_per_page_ns": ("ns/page", "second write of mapped memory (memset), per page"),
    "zero_per_page_ns": ("ns/page", "memset of mapped memory, per 4 KiB page"),
    "copy_per_page_ns": ("ns/page", "memmove between mapped buffers, per 4 KiB page"),
    "teardown_per_page_ns": ("ns/page", "exit latency over the child's written pages: slope"),
    "teardown_per_mib_ns": ("ns/MiB", "exit latency over the child's written MiB: slope"),
    "exit_fixed_ns": ("ns", "exit latency of a child that wrote nothing: the line's intercept"),
    "exit_fixed_unshared_ns": (
        "ns",
        "that intercept less Linux's drop of the PTEs fork copied from the parent",
    ),
    "exec_ns": ("ns", "fork+execv(/bin/true)+exit latency"),
    "exec_minus_fork_ns": ("ns", "fork+exec+exit less fork+exit"),
    "exec_faults": ("faults", "page faults of the exec child (before and after exec)"),
    "cow_fault_per_page_ns": ("ns/page", "copy-on-write fault: first write less second"),
    "cow_fork_per_page_ns": ("ns/page", "fork to the child's start, per page the parent wrote"),
    "file_fault_per_page_ns": ("ns/page", "read fault on a cached file: first read less second"),
    "file_pages_per_fault": ("pages", "file pages mapped per read fault (fault-around)"),
}


def describe_figure(name: str) -> tuple[str, str]:
    """A figure's unit and what it is, for a name of ``FIGURES`` or one by size or
    count (``exit_ns@16``, ``concurrent_ratio@2``)."""
    if name in FIGURES:
        return FIGURES[name]
    base, _, arg = name.partition("@")
    return {
        "exit_ns": ("ns", f"exit latency, child wrote {arg} MiB"),
        "cow_exit_ns": ("ns", f"exit latency after writing {arg} MiB copy-on-write"),
        "concurrent_exit_ns": ("ns", f"exit latency, children exiting at once: {arg}"),
        "concurrent_ratio": ("x", f"exit latency, {arg} exiting at once / one alone"),
    }.get(base, ("", name))


class MeasurementError(ValueError):
    """A host document that cannot be used: one line naming the file and field."""


@dataclass(frozen=True, slots=True)
class Measurements:
    """The host document and the figures made from it."""

    doc: dict[str, Any]
    figures: dict[str, Figure]

    @property
    def date(self) -> str:
        return str(self.doc["date"])

    def machine_text(self) -> str:
        """``uname -r``, the CPU model and the CPU count, as a profile's source says it."""
        m = self.doc["machine"]
        return f"Linux {m['kernel']}, {m['cpu']}, {m['ncpu']} CPUs"

    def load_text(self) -> str:
        lo, hi = self.doc["load_1min"]
        return f"1-min load {lo:.2f} before, {hi:.2f} after"

    def spec(self, design: str = "linux") -> MicroSpec:
        """The same benchmarks for the model."""
        d = self.doc
        f = self.figures
        fork_child = round(f["child_faults"].median)
        exec_after = max(round(f["exec_faults"].median) - fork_child, 1)
        ncpu = int(d["machine"]["ncpu"])
        return MicroSpec(
            ncpu=ncpu,
            mib=tuple(d["mib"]),
            big_mib=int(d["big_mib"]),
            counts=tuple(sorted(int(c) for c in d["samples"]["concurrent"])),
            layout=Layout(
                entries=int(d["parent"]["entries"]),
                anon_pages=int(d["parent"]["anon_pages"]),
                child_faults=fork_child,
                parent_faults=round(f["parent_faults"].median),
            ),
            program_pages=-(-int(d["program"]["bytes"]) // PAGE),
            exec_faults=exec_after,
            design=design,
        )


Columns = dict[str, list[float]]


def _col(cols: Columns, key: str) -> list[float]:
    return [float(v) for v in cols[key]]


def _per_variant(doc: dict[str, Any], bench: str) -> dict[int, Columns]:
    return {int(k): v for k, v in doc["samples"][bench].items()}


def _slopes(
    cols_by: dict[int, Columns], sizes: list[int], key: str
) -> tuple[list[float], list[float]]:
    """Per repeat, the slope and intercept of ``key`` over the pages of ``sizes``."""
    runs = list(zip(*(_col(cols_by[m], key) for m in sizes), strict=True))
    return slopes_by_repeat([m * MIB_PAGES for m in sizes], runs)


def _pooled(cols_by: dict[int, Columns], sizes: list[int], a: str, b: str | None = None) -> Figure:
    """Per repeat, ``a`` (less ``b``) summed over the sizes, per page."""
    n = min(len(cols_by[m][a]) for m in sizes)
    pages = sum(m * MIB_PAGES for m in sizes)
    vals = [
        sum(cols_by[m][a][r] - (cols_by[m][b][r] if b else 0) for m in sizes) / pages
        for r in range(n)
    ]
    return figure(vals)


def compute_figures(doc: dict[str, Any]) -> dict[str, Figure]:
    """Every figure the samples give (module doc). Raises KeyError, TypeError,
    ValueError or IndexError on a malformed document (``read`` turns them into one
    line)."""
    out: dict[str, Figure] = {}
    anon = int(doc["parent"]["anon_pages"])
    sizes = sorted(int(m) for m in doc["mib"])
    nonzero = [m for m in sizes if m]
    big = int(doc["big_mib"])

    fe = _per_variant(doc, "fork_exit")
    out["fork_exit_ns"] = figure(_col(fe[0], "latency_ns"))
    out["child_faults"] = figure(_col(fe[0], "child_minflt"))
    out["parent_faults"] = figure(_col(fe[0], "parent_minflt"))
    if len(sizes) >= 2:
        slopes, _ = _slopes(fe, sizes, "latency_ns")
        out["fork_exit_per_parent_page_ns"] = figure(slopes)
        lat0 = _col(fe[0], "latency_ns")
        out["fork_exit_unshared_ns"] = figure(
            [x - s * anon for x, s in zip(lat0, slopes, strict=True)]
        )
        exit_slopes, _ = _slopes(fe, sizes, "exit_ns")
        out["exit_per_parent_page_ns"] = figure(exit_slopes)

    te = _per_variant(doc, "touch_exit")
    for m in sizes:
        out[f"exit_ns@{m}"] = figure(_col(te[m], "exit_ns"))
    if nonzero:
        out["fault_per_page_ns"] = _pooled(te, nonzero, "fault_ns", "write_ns")
        out["write_per_page_ns"] = _pooled(te, nonzero, "write_ns")
    if len(sizes) >= 2:
        slopes, icpts = _slopes(te, sizes, "exit_ns")
        out["teardown_per_page_ns"] = figure(slopes)
        out["teardown_per_mib_ns"] = figure([s * MIB_PAGES for s in slopes])
        out["exit_fixed_ns"] = figure(icpts)
        if "exit_per_parent_page_ns" in out:
            out["exit_fixed_unshared_ns"] = figure(
                [b - s * anon for b, s in zip(icpts, exit_slopes, strict=True)]
            )

    cp = doc["samples"]["copy"][str(big)]
    pages = big * MIB_PAGES
    out["zero_per_page_ns"] = figure([v / pages for v in _col(cp, "zero_ns")])
    out["copy_per_page_ns"] = figure([v / pages for v in _col(cp, "copy_ns")])

    ex = doc["samples"]["exec"]["0"]
    out["exec_ns"] = figure(_col(ex, "latency_ns"))
    out["exec_faults"] = figure(_col(ex, "child_minflt"))
    out["exec_minus_fork_ns"] = figure(
        [a - b for a, b in zip(_col(ex, "latency_ns"), _col(fe[0], "latency_ns"), strict=True)]
    )

    cw = _per_variant(doc, "cow")
    for m in sizes:
        out[f"cow_exit_ns@{m}"] = figure(_col(cw[m], "exit_ns"))
    if nonzero:
        out["cow_fault_per_page_ns"] = _pooled(cw, nonzero, "fault_ns", "write_ns")
    if len(sizes) >= 2:
        out["cow_fork_per_page_ns"] = figure(_slopes(cw, sizes, "fork_ns")[0])

    fl = _per_variant(doc, "file")
    if nonzero:
        out["file_fault_per_page_ns"] = _pooled(fl, nonzero, "fault_ns", "read_ns")
    if len(nonzero) >= 2:
        per_page, _ = _slopes(fl, nonzero, "child_minflt")
        out["file_pages_per_fault"] = figure([1 / s if s > 0 else 0.0 for s in per_page])

    cc = _per_variant(doc, "concurrent")
    counts = sorted(cc)
    for c in counts:
        out[f"concurrent_exit_ns@{c}"] = figure(_col(cc[c], "exit_ns"))
    if counts and counts[0] == 1:
        alone = median(_col(cc[1], "exit_ns"))
        for c in counts[1:]:
            if alone > 0:
                out[f"concurrent_ratio@{c}"] = figure([x / alone for x in _col(cc[c], "exit_ns")])
    return out


def from_doc(doc: dict[str, Any], name: str = "measurements") -> Measurements:
    """Figures of a host document; MeasurementError in one line if it is malformed."""
    if not isinstance(doc, dict):
        raise MeasurementError(f"{name}: not a JSON object")
    if isinstance(doc.get("host"), dict):
        doc = doc["host"]  # the whole --json document: its host part
    if doc.get("format") != HOST_FORMAT:
        raise MeasurementError(
            f"{name}: format must be {HOST_FORMAT} (got {doc.get('format')!r}): "
            "not written by exitsim calibrate --json?"
        )
    try:
        for key in ("date", "machine", "load_1min", "mib", "big_mib", "parent", "program"):
            if key not in doc:
                raise KeyError(key)
        figures = compute_figures(doc)
    except KeyError as e:
        raise MeasurementError(f"{name}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as e:
        raise MeasurementError(f"{name}: malformed samples: {e}") from None
    return Measurements(doc, figures)


def read(path: str) -> Measurements:
    """A ``--json`` file of ``exitsim calibrate`` (or host.py's output) read back."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MeasurementError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise MeasurementError(f"{path}: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MeasurementError(f"{path}: not JSON: {e}") from None
    return from_doc(doc, path)
