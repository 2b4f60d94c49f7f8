"""From the host's figures to a cost profile: the amd64 profile (this host is x86_64),
with the keys the microbenchmarks determine replaced, each with a source that says
what measured it and, where one figure is spread over several keys, the rule.

Which figure sets which key, in the order they are set (a later step simulates with
the values of the earlier ones, so each is the rest of its figure after everything
the model already charges for it):

1. ``page_zero_ns``, ``page_copy_ns``: ``memset`` and ``memmove`` of mapped memory
   per 4 KiB page, directly (the kernel's page zeroing and copying move the same
   bytes).
2. The per-page teardown keys (``TEARDOWN_KEYS``): the slope of exit latency over the
   pages the child wrote. Under the ``linux`` design an exit charges each anonymous
   page ``pte_ns`` (pmap_remove), ``amap_slot_ns`` (amap_wipeout), ``pageq_ns`` (off
   the page queue), ``pcpu_cache_ns`` (into the magazine), ``page_free_ns`` and
   ``pmr_insert_ns`` per range (magazine drains into the trees), and each 2 MB block
   ``ptp_scan_ns``; one slope cannot tell them apart, so all are scaled by the one
   factor that makes the model's slope the host's, keeping amd64's proportions, and
   ``pte_ns`` takes what rounding leaves.
3. ``fault_ns``: a zero-fill fault per page (first write less second) less what the
   model charges a zero-fill fault besides it (``page_zero_ns``, ``pte_ns``,
   ``pageq_ns``, ``pcpu_cache_ns``, ``page_alloc_ns``, page-table pages).
4. ``fork_ns``: fork+exit latency less Linux's copy and drop of the parent's
   page-table entries (the slope over the parent's written memory, times its resident
   anonymous pages: OpenBSD's fork copies none, nor does the model's), less the model's
   charges for the rest of the same fork+exit.
5. ``exec_ns``: fork+exec+exit less fork+exit, less the model's charges for the
   image's mapping, faults and teardown.

Every other key keeps its amd64 value and source.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from exitsim.calibrate.micro import MIB_PAGES, model_figures
from exitsim.calibrate.text import num
from exitsim.machine.costs import (
    COST_KEYS,
    CostProfile,
    builtin_profile,
    parse_profile,
    toml_str,
)

if TYPE_CHECKING:
    from exitsim.calibrate.measured import Measurements
    from exitsim.calibrate.stats import Figure

#: The profile's name, as its description and the file give it.
NAME = "linux-host"
#: The built-in profile it starts from: this host is x86_64.
BASE_ARCH = "amd64"
#: What every measured key's source starts with.
MEASURED_BY = "measured here by exitsim calibrate"

#: The keys an exit charges per anonymous page (or per 2 MB block) under ``linux``.
TEARDOWN_KEYS = (
    "pte_ns",
    "amap_slot_ns",
    "pageq_ns",
    "pcpu_cache_ns",
    "page_free_ns",
    "pmr_insert_ns",
    "ptp_scan_ns",
)
#: Every key the fit sets, in the order it sets them.
MEASURED_KEYS = ("page_zero_ns", "page_copy_ns", *TEARDOWN_KEYS, "fault_ns", "fork_ns", "exec_ns")


class FitError(ValueError):
    """The measurements cannot determine a key (too few sizes): one line."""


def spread(f: Figure, unit: str = "ns") -> str:
    """``220 ns (median of 101; p10 216, p90 231)``."""
    return f"{num(f.median)} {unit} (median of {f.n}; p10 {num(f.p10)}, p90 {num(f.p90)})"


def _with(profile: CostProfile, **values: int) -> CostProfile:
    return replace(profile, costs=replace(profile.costs, **values))


class _Fitter:
    """The steps of the module doc, each filling ``values`` and ``sources``."""

    def __init__(self, meas: Measurements, base: CostProfile, design: str) -> None:
        self.meas = meas
        self.fig = meas.figures
        self.spec = meas.spec(design)
        self.prof = base
        self.sources: dict[str, str] = {}
        self.tail = f"{meas.date}, {meas.machine_text()}"

    def set(self, key: str, value: float, what: str) -> None:
        v = max(0, round(value))
        if value < 0:
            what += f"; the rest was negative ({num(value)} ns), so 0"
        self.prof = _with(self.prof, **{key: v})
        self.sources[key] = f"{MEASURED_BY} ({what}), {self.tail}"

    def need(self, name: str) -> Figure:
        f = self.fig.get(name)
        if f is None:
            raise FitError(f"the measurements have no {name}: give at least two sizes, one > 0")
        return f

    def zero_copy(self) -> None:
        z, c = self.fig["zero_per_page_ns"], self.fig["copy_per_page_ns"]
        big = self.meas.doc["big_mib"]
        self.set(
            "page_zero_ns",
            z.median,
            f"memset of {big} MiB already mapped: {spread(z)} per 4 KiB page; the kernel "
            "zeroes a page with the same stores",
        )
        self.set(
            "page_copy_ns",
            c.median,
            f"memmove of {big} MiB between mapped buffers: {spread(c)} per 4 KiB page; a "
            "copy-on-write fault copies a page the same way",
        )

    def teardown(self) -> None:
        slope = self.need("teardown_per_page_ns")
        sizes = self.meas.doc["mib"]
        before = model_figures(self.spec, self.prof, ("touch_exit",))["teardown_per_page_ns"]
        if before <= 0:
            raise FitError("the model charges no teardown per page: nothing to scale")
        factor = slope.median / before
        old = {k: getattr(self.prof.costs, k) for k in TEARDOWN_KEYS}
        self.prof = _with(self.prof, **{k: max(0, round(v * factor)) for k, v in old.items()})
        after = model_figures(self.spec, self.prof, ("touch_exit",))["teardown_per_page_ns"]
        # pte_ns is charged once per page: it takes the rounding's rest.
        pte = max(0, round(self.prof.costs.pte_ns + slope.median - after))
        self.prof = _with(self.prof, pte_ns=pte)
        was = ", ".join(f"{k} {v}" for k, v in old.items())
        what = (
            f"slope of exit latency over the child's {sizes[0]}-{sizes[-1]} MiB written: "
            f"{spread(slope)} per 4 KiB page, {num(slope.median * MIB_PAGES)} ns per MiB; "
            f"split: the per-page teardown keys ({', '.join(TEARDOWN_KEYS)}) scaled by one "
            f"factor, {factor:.3f}, keeping the {BASE_ARCH} proportions ({was}), and pte_ns "
            f"takes the rounding's rest; the model at the {BASE_ARCH} values gave "
            f"{num(before)} ns per page"
        )
        for k in TEARDOWN_KEYS:
            self.sources[k] = f"{MEASURED_BY} ({what}), {self.tail}"

    def fault(self) -> None:
        f = self.need("fault_per_page_ns")
        rest = model_figures(self.spec, _with(self.prof, fault_ns=0), ("touch_exit",))[
            "fault_per_page_ns"
        ]
        self.set(
            "fault_ns",
            f.median - rest,
            f"zero-fill faults, a first memset of fresh memory less a second: {spread(f)} per "
            f"page; less the model's other charges of a zero-fill fault (page_zero_ns, "
            f"pte_ns, pageq_ns, pcpu_cache_ns, page_alloc_ns, page-table pages: "
            f"{num(rest)} ns)",
        )

    def fork(self) -> None:
        fe = self.fig["fork_exit_ns"]
        per = self.need("fork_exit_per_parent_page_ns")
        target = self.need("fork_exit_unshared_ns")
        lay = self.spec.layout
        rest = model_figures(self.spec, _with(self.prof, fork_ns=0), ("fork_exit",))["fork_exit_ns"]
        self.set(
            "fork_ns",
            target.median - rest,
            f"fork+exit of a bare CPython parent ({lay.entries} mappings, {lay.anon_pages} "
            f"anonymous pages resident): {spread(fe)}; less Linux's copy and drop of the "
            f"parent's page-table entries, which OpenBSD's fork does not make "
            f"({num(per.median)} ns per page, the slope over the parent's written memory, "
            f"per repeat), leaving {spread(target)}; less the model's charges for the rest "
            f"of the same fork+exit (map entries, pmap, vmspace, u-area, the "
            f"{lay.child_faults} and {lay.parent_faults} copy-on-write faults the child and "
            f"the parent took, the exit and wait4: {num(rest)} ns); what is left also "
            "holds CPython's own work after fork and the wake-up of the waiting parent, "
            "which the model has no keys for",
        )

    def exec(self) -> None:
        d = self.fig["exec_minus_fork_ns"]
        prog = self.meas.doc["program"]["path"]
        p0 = _with(self.prof, exec_ns=0)
        m = model_figures(self.spec, p0, ("exec",))
        rest = m["exec_minus_fork_ns"]
        self.set(
            "exec_ns",
            d.median - rest,
            f"fork+execv({prog})+exit less fork+exit, per repeat: {spread(d)}; less the "
            f"model's charges for the image's mapping, its {self.spec.exec_faults} page "
            f"faults and its teardown ({num(rest)} ns); includes the dynamic loader's work "
            "in user space, which the model has no key for",
        )


def fit_profile(
    meas: Measurements, base: CostProfile | None = None, design: str = "linux"
) -> tuple[CostProfile, dict[str, str]]:
    """The fitted values (a profile, with ``base``'s sources still) and the new
    sources of the keys the fit set."""
    f = _Fitter(meas, base or builtin_profile(BASE_ARCH), design)
    f.zero_copy()
    f.teardown()
    f.fault()
    f.fork()
    f.exec()
    return f.prof, f.sources


def _toml_value(v: int) -> str:
    return f"{v:_}" if v >= 1_000 else str(v)


def profile_toml(meas: Measurements, base: CostProfile | None = None) -> str:
    """The ``linux-host`` profile file for ``meas``: every key, the fitted ones with
    their new sources, the rest with ``base``'s (amd64's). Checked by the profile
    parser before it is returned."""
    base = base or builtin_profile(BASE_ARCH)
    prof, sources = fit_profile(meas, base)
    desc = (
        f"{NAME}: this Linux host ({meas.machine_text()}) measured by exitsim calibrate on "
        f"{meas.date} ({meas.load_text()}); the keys it does not measure are {BASE_ARCH}'s"
    )
    lines = [
        f"# {NAME} cost profile, written by exitsim calibrate (src/exitsim/calibrate/).",
        f"# The {BASE_ARCH} profile with the keys this host's microbenchmarks determine",
        "# replaced; each of those says what measured it and how a figure shared by several",
        "# keys is split. docs/calibration.md has the figures and the model against them.",
        "[profile]",
        f"arch = {toml_str(base.arch)}",
        f"description = {toml_str(desc)}",
    ]
    for key in COST_KEYS:
        src = sources.get(key, base.sources[key])
        lines += [
            "",
            f"[costs.{key}]",
            f"value = {_toml_value(getattr(prof.costs, key))}",
            f"source = {toml_str(src)}",
        ]
    text = "\n".join(lines) + "\n"
    parse_profile(text, f"{NAME}.toml")  # refuse to write what load_profile would refuse
    return text
