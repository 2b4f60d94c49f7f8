"""Per-CPU TLB models (machine/tlb.py): ExactTlb and RangeTlb.

Both stand for the hardware TLBs of openbsd-exit-path.md sections 5 and 6: translations
tagged by ASID (arm64 ASID pair, amd64 PCID), cached per CPU, dropped by per-page,
per-range, per-ASID or whole-TLB invalidation. The scenarios that only need the shared
interface run on both granularities; the rest check each model's own queries.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitsim.machine.tlb import ExactTlb, RangeTlb, make_tlb

GRANULARITIES = ["exact", "range"]


@pytest.fixture(params=GRANULARITIES)
def granularity(request: pytest.FixtureRequest) -> str:
    return request.param


def cached(tlb: ExactTlb | RangeTlb, cpu: int, asid: int, vpn: int) -> bool:
    """Whether ``vpn`` of ``asid`` is cached on ``cpu``, for either model (ExactTlb
    and RangeTlb both answer with the ppn, which may be 0)."""
    r = tlb.lookup(cpu, asid, vpn)
    return r is not None and r is not False


def cached_vpns(tlb: ExactTlb | RangeTlb, cpu: int, asid: int, span: range) -> list[int]:
    return [v for v in span if cached(tlb, cpu, asid, v)]


# -- shared semantics, both granularities ----------------------------------------------


def test_make_tlb_builds_the_model_named_by_granularity() -> None:
    """Machine picks its TLB model by granularity: "exact" or "range"."""
    assert isinstance(make_tlb("exact", 2), ExactTlb)
    assert isinstance(make_tlb("range", 2), RangeTlb)


def test_make_tlb_refuses_unknown_granularity() -> None:
    """Only the two granularities exist; anything else is refused by name."""
    with pytest.raises(ValueError, match=r"granularity must be exact or range \(got 'page'\)"):
        make_tlb("page", 2)


def test_fill_caches_each_page_of_the_walk_on_that_cpu_and_asid_only(granularity: str) -> None:
    """A page walk on one CPU caches translations in that CPU's TLB, tagged by the
    running ASID; other CPUs and ASIDs see nothing."""
    tlb = make_tlb(granularity, 2)
    tlb.fill(0, 3, 10, 100, npages=4)
    assert cached_vpns(tlb, 0, 3, range(0, 20)) == [10, 11, 12, 13]
    assert cached_vpns(tlb, 1, 3, range(0, 20)) == []
    assert cached_vpns(tlb, 0, 4, range(0, 20)) == []
    assert tlb.count(0, 3) == 4
    assert tlb.count(0) == 4
    assert tlb.count(1) == 0
    assert tlb.count(0, 4) == 0


def test_exact_lookup_returns_the_physical_page_of_each_translation() -> None:
    """ExactTlb keeps (asid, vpn) -> ppn, so a lookup yields the physical page."""
    tlb = ExactTlb(1)
    tlb.fill(0, 3, 10, 100, npages=3)
    assert [tlb.lookup(0, 3, v) for v in (9, 10, 11, 12, 13)] == [None, 100, 101, 102, None]


def test_counts_are_in_pages_for_large_ranges(granularity: str) -> None:
    """Counts are pages, whatever the model stores (RangeTlb keeps one range)."""
    tlb = make_tlb(granularity, 1)
    tlb.fill(0, 1, 0, 0, npages=1000)
    tlb.fill(0, 2, 5000, 0, npages=24)
    assert tlb.count(0, 1) == 1000
    assert tlb.count(0, 2) == 24
    assert tlb.count(0) == 1024
    assert tlb.invalidate_range(0, 1, 100, 300) == 200
    assert tlb.count(0, 1) == 800


def test_fill_over_cached_pages_counts_each_page_once(granularity: str) -> None:
    """Refilling a cached page replaces its translation; it is not cached twice."""
    tlb = make_tlb(granularity, 1)
    tlb.fill(0, 1, 0, 0, npages=10)
    tlb.fill(0, 1, 5, 50, npages=10)
    tlb.fill(0, 1, 2, 20, npages=2)
    assert tlb.count(0, 1) == 15
    assert cached_vpns(tlb, 0, 1, range(-5, 25)) == list(range(15))


def test_fill_of_zero_pages_caches_and_drops_nothing(granularity: str) -> None:
    """A walk that caches no translation leaves the TLB as it was; in particular it must
    not drop translations the hardware still holds (design invariant 1 needs an
    over-approximation of what TLBs may hold, never an under-approximation)."""
    tlb = make_tlb(granularity, 1)
    tlb.fill(0, 1, 0, 0, npages=20)
    tlb.fill(0, 1, 5, 0, npages=0)
    assert tlb.count(0, 1) == 20
    assert cached_vpns(tlb, 0, 1, range(0, 20)) == list(range(20))


def test_invalidate_page_drops_that_page_and_keeps_its_neighbours(granularity: str) -> None:
    """invlpg / tlbi vae1: one page of one ASID goes, nothing else."""
    tlb = make_tlb(granularity, 2)
    tlb.fill(0, 1, 0, 0, npages=10)
    tlb.fill(1, 1, 0, 0, npages=10)
    tlb.fill(0, 2, 0, 0, npages=10)
    assert tlb.invalidate_page(0, 1, 4) == 1
    assert cached_vpns(tlb, 0, 1, range(10)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert tlb.count(1, 1) == 10
    assert tlb.count(0, 2) == 10
    # A page that is not cached: nothing to drop.
    assert tlb.invalidate_page(0, 1, 4) == 0
    assert tlb.invalidate_page(0, 1, 99) == 0
    assert tlb.invalidate_page(0, 9, 0) == 0


# (fills as (vpn, npages), invalidated [start, end), pages dropped, pages left cached)
RANGE_CASES = {
    "exactly_one_range": ([(10, 10)], (10, 20), 10, []),
    "trim_front": ([(10, 10)], (5, 15), 5, list(range(15, 20))),
    "trim_back": ([(10, 10)], (15, 30), 5, list(range(10, 15))),
    "split_middle": ([(10, 10)], (13, 17), 4, [10, 11, 12, 17, 18, 19]),
    "touching_ends_untouched": ([(10, 10)], (0, 10), 0, list(range(10, 20))),
    "touching_start_untouched": ([(10, 10)], (20, 30), 0, list(range(10, 20))),
    "across_gap_trims_both_sides": (
        [(0, 10), (20, 10)],
        (5, 25),
        10,
        [0, 1, 2, 3, 4, 25, 26, 27, 28, 29],
    ),
    "covers_several_ranges": ([(0, 5), (10, 5), (20, 5)], (0, 40), 15, []),
}


@pytest.mark.parametrize(
    ("fills", "inval", "dropped", "left"), RANGE_CASES.values(), ids=list(RANGE_CASES)
)
def test_invalidate_range_drops_exactly_the_cached_pages_inside(
    granularity: str,
    fills: list[tuple[int, int]],
    inval: tuple[int, int],
    dropped: int,
    left: list[int],
) -> None:
    """A range invalidation (amd64 pmap_tlb_shootrange's invlpg loop, arm64 per-page
    tlbi) drops the cached pages of [start, end) and returns how many; pages outside the
    half-open range, including partially overlapped ranges' ends, stay cached."""
    tlb = make_tlb(granularity, 2)
    for vpn, n in fills:
        tlb.fill(0, 1, vpn, 1000 + vpn, npages=n)
        tlb.fill(1, 1, vpn, 1000 + vpn, npages=n)
        tlb.fill(0, 2, vpn, 2000 + vpn, npages=n)
    before = tlb.count(0, 1)
    assert tlb.invalidate_range(0, 1, *inval) == dropped
    assert cached_vpns(tlb, 0, 1, range(-5, 45)) == left
    assert tlb.count(0, 1) == before - dropped == len(left)
    # Same ASID on another CPU, and another ASID here, keep everything.
    assert tlb.count(1, 1) == before
    assert tlb.count(0, 2) == before


def test_range_tlb_trims_and_splits_ranges_without_overlap() -> None:
    """RangeTlb's stored ranges after partial invalidations: the front and back are
    trimmed, a middle hole splits one range in two, and ranges never overlap."""
    tlb = RangeTlb(1)
    tlb.fill(0, 1, 0, npages=100)
    tlb.invalidate_range(0, 1, 40, 60)
    assert tlb.ranges[0][1] == {0: 40, 60: 100}
    tlb.invalidate_range(0, 1, -10, 5)
    assert tlb.ranges[0][1] == {5: 40, 60: 100}
    tlb.invalidate_range(0, 1, 90, 200)
    assert tlb.ranges[0][1] == {5: 40, 60: 90}
    tlb.invalidate_range(0, 1, 30, 70)
    assert tlb.ranges[0][1] == {5: 30, 70: 90}
    tlb.invalidate_range(0, 1, 0, 100)
    assert 1 not in tlb.ranges[0]


def test_range_tlb_fill_over_a_range_replaces_the_overlap() -> None:
    """RangeTlb.fill keeps one ASID's ranges disjoint: the new range replaces the part
    of older ranges it overlaps."""
    tlb = RangeTlb(1)
    tlb.fill(0, 1, 0, npages=10)
    tlb.fill(0, 1, 5, npages=10)
    assert tlb.ranges[0][1] == {0: 5, 5: 15}
    tlb.fill(0, 1, 2, npages=1)
    assert tlb.ranges[0][1] == {0: 2, 2: 3, 3: 5, 5: 15}
    assert tlb.count(0, 1) == 15


@pytest.mark.parametrize(("start", "end"), [(5, 5), (10, 5)], ids=["empty", "reversed"])
def test_invalidate_range_with_no_pages_drops_nothing(
    granularity: str, start: int, end: int
) -> None:
    """An empty (or reversed) range names no page: nothing is dropped, the count is 0
    and the cached pages stay exactly as they were."""
    tlb = make_tlb(granularity, 1)
    tlb.fill(0, 1, 0, 0, npages=20)
    assert tlb.invalidate_range(0, 1, start, end) == 0
    assert tlb.count(0, 1) == 20
    assert cached_vpns(tlb, 0, 1, range(-5, 25)) == list(range(20))


def test_invalidate_asid_drops_only_that_asid_on_that_cpu(granularity: str) -> None:
    """tlbi aside1 / invpcid single-context: every page of one ASID on one CPU; other
    ASIDs there and the same ASID on other CPUs are untouched."""
    tlb = make_tlb(granularity, 3)
    for cpu in range(3):
        tlb.fill(cpu, 4, 0, 0, npages=8)
        tlb.fill(cpu, 5, 100, 0, npages=3)
    assert tlb.invalidate_asid(1, 4) == 8
    assert tlb.count(1, 4) == 0
    assert cached_vpns(tlb, 1, 4, range(10)) == []
    assert tlb.count(1, 5) == 3
    assert tlb.count(0, 4) == 8
    assert tlb.count(2, 4) == 8
    assert tlb.invalidate_asid(1, 4) == 0
    assert tlb.invalidate_asid(1, 99) == 0


def test_invalidate_all_clears_every_asid_on_one_cpu_only(granularity: str) -> None:
    """A full local flush (tlbflush / vmalle1) empties that CPU's TLB, all ASIDs, and
    no other CPU's."""
    tlb = make_tlb(granularity, 2)
    for cpu in range(2):
        tlb.fill(cpu, 1, 0, 0, npages=4)
        tlb.fill(cpu, 2, 50, 0, npages=6)
    assert tlb.invalidate_all(0) == 10
    assert tlb.count(0) == 0
    assert cached_vpns(tlb, 0, 1, range(100)) == []
    assert cached_vpns(tlb, 0, 2, range(100)) == []
    assert tlb.count(1) == 10
    assert tlb.count(1, 2) == 6
    assert tlb.invalidate_all(0) == 0


# -- ExactTlb: which TLBs may still reach a physical page -------------------------------


def test_exact_reaches_tracks_fills_across_cpus_until_the_last_is_invalidated() -> None:
    """Invariant T1 needs "may any TLB still translate to this page?": a page reached
    from two CPUs stays reachable until both translations are gone."""
    tlb = ExactTlb(2)
    tlb.fill(0, 1, 10, 500)
    tlb.fill(1, 1, 10, 500)
    assert tlb.reaches(500)
    assert tlb.holders(500) == [(0, 1, 10), (1, 1, 10)]
    tlb.invalidate_page(0, 1, 10)
    assert tlb.reaches(500)
    assert tlb.holders(500) == [(1, 1, 10)]
    tlb.invalidate_page(1, 1, 10)
    assert not tlb.reaches(500)
    assert tlb.holders(500) == []
    assert tlb.refs == {}


def test_exact_refill_with_another_ppn_releases_the_old_page() -> None:
    """A vpn refilled after its PTE changed (COW, remap) translates to the new page
    only; the old page is no longer reachable through it."""
    tlb = ExactTlb(1)
    tlb.fill(0, 1, 7, 300)
    tlb.fill(0, 1, 7, 301)
    assert tlb.lookup(0, 1, 7) == 301
    assert not tlb.reaches(300)
    assert tlb.reaches(301)
    assert tlb.holders(301) == [(0, 1, 7)]
    assert tlb.count(0, 1) == 1
    # Refilling with the same page keeps exactly one reference.
    tlb.fill(0, 1, 7, 301)
    assert tlb.refs == {301: 1}


def test_exact_holders_lists_every_translation_to_a_shared_page_in_order() -> None:
    """A page shared by several address spaces (fork COW, SysV shm) is reached from
    each (cpu, asid, vpn); holders lists them by CPU, then ASID, then vpn."""
    tlb = ExactTlb(2)
    tlb.fill(1, 9, 40, 77)
    tlb.fill(1, 2, 80, 77)
    tlb.fill(1, 2, 30, 77)
    tlb.fill(0, 5, 1, 77)
    tlb.fill(0, 5, 2, 78)
    assert tlb.holders(77) == [(0, 5, 1), (1, 2, 30), (1, 2, 80), (1, 9, 40)]
    assert tlb.refs[77] == 4


@pytest.mark.parametrize(
    "invalidate",
    [
        lambda t: t.invalidate_range(0, 1, 0, 4),
        lambda t: t.invalidate_asid(0, 1),
        lambda t: t.invalidate_all(0),
    ],
    ids=["range", "asid", "all"],
)
def test_exact_every_invalidation_releases_the_pages_it_drops(invalidate) -> None:
    """Each kind of invalidation updates reachability: the dropped pages become
    unreachable, pages still cached elsewhere stay reachable."""
    tlb = ExactTlb(2)
    tlb.fill(0, 1, 0, 100, npages=4)
    tlb.fill(1, 1, 0, 100, npages=1)
    invalidate(tlb)
    assert tlb.reaches(100)
    assert tlb.holders(100) == [(1, 1, 0)]
    assert [tlb.reaches(p) for p in (101, 102, 103)] == [False, False, False]


# -- RangeTlb.covers ---------------------------------------------------------------------


def test_range_covers_lists_cpus_that_may_hold_any_page_of_the_range() -> None:
    """RangeTlb answers "which CPUs may hold a translation of [start, end) of this
    ASID" (the set a shootdown must reach), in CPU order, end exclusive."""
    tlb = RangeTlb(4)
    tlb.fill(3, 1, 10, npages=5)
    tlb.fill(1, 1, 0, npages=11)
    tlb.fill(2, 2, 0, npages=100)
    assert tlb.covers(1, 0, 100) == [1, 3]
    assert tlb.covers(1, 10, 11) == [1, 3]
    assert tlb.covers(1, 11, 14) == [3]
    assert tlb.covers(1, 15, 100) == []
    assert tlb.covers(2, 50, 51) == [2]
    tlb.invalidate_range(3, 1, 0, 100)
    assert tlb.covers(1, 0, 100) == [1]
    tlb.invalidate_asid(1, 1)
    assert tlb.covers(1, 0, 100) == []


# -- reference models ------------------------------------------------------------------

NCPU = 3
ASIDS = st.integers(0, 3)
VPNS = st.integers(0, 40)
CPUS = st.integers(0, NCPU - 1)

OPS = st.one_of(
    st.tuples(st.just("fill"), CPUS, ASIDS, VPNS, st.integers(0, 30), st.integers(1, 6)),
    st.tuples(st.just("page"), CPUS, ASIDS, VPNS),
    # (start, length): reversed ranges have their own test above.
    st.tuples(st.just("range"), CPUS, ASIDS, VPNS, st.integers(0, 20)),
    st.tuples(st.just("asid"), CPUS, ASIDS),
    st.tuples(st.just("all"), CPUS),
)


def _drop(model: dict, keys: list) -> int:
    for k in keys:
        del model[k]
    return len(keys)


def _apply_to_model(model: dict[tuple[int, int, int], int], op: tuple) -> int | None:
    """Apply ``op`` to a dict {(cpu, asid, vpn): ppn}; return the count it reports."""
    kind, cpu = op[0], op[1]
    if kind == "fill":
        _, _, asid, vpn, ppn, n = op
        for i in range(n):
            model[(cpu, asid, vpn + i)] = ppn + i
        return None
    if kind == "page":
        _, _, asid, vpn = op
        return _drop(model, [k for k in model if k == (cpu, asid, vpn)])
    if kind == "range":
        _, _, asid, start, length = op
        end = start + length
        return _drop(model, [k for k in model if k[:2] == (cpu, asid) and start <= k[2] < end])
    if kind == "asid":
        return _drop(model, [k for k in model if k[:2] == (cpu, op[2])])
    return _drop(model, [k for k in model if k[0] == cpu])


def _apply_to_tlb(tlb: ExactTlb | RangeTlb, op: tuple) -> int | None:
    kind = op[0]
    if kind == "fill":
        _, cpu, asid, vpn, ppn, n = op
        tlb.fill(cpu, asid, vpn, ppn, npages=n)
        return None
    if kind == "page":
        return tlb.invalidate_page(*op[1:])
    if kind == "range":
        _, cpu, asid, start, length = op
        return tlb.invalidate_range(cpu, asid, start, start + length)
    if kind == "asid":
        return tlb.invalidate_asid(*op[1:])
    return tlb.invalidate_all(op[1])


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(OPS, max_size=40))
def test_exact_tlb_matches_a_dict_reference_model(ops: list[tuple]) -> None:
    """Over any sequence of fills and invalidations, ExactTlb holds exactly the
    translations a plain dict {(cpu, asid, vpn): ppn} holds, reports the same dropped
    counts, and its per-page reachability (refs, reaches, holders) matches the dict."""
    tlb = ExactTlb(NCPU)
    model: dict[tuple[int, int, int], int] = {}
    for op in ops:
        assert _apply_to_tlb(tlb, op) == _apply_to_model(model, op), op
        got = {
            (cpu, asid, vpn): ppn
            for cpu, spaces in enumerate(tlb.entries)
            for asid, space in spaces.items()
            for vpn, ppn in space.items()
        }
        assert got == model
        assert tlb.refs == dict(Counter(model.values()))
    for cpu in range(NCPU):
        assert tlb.count(cpu) == sum(1 for k in model if k[0] == cpu)
        for asid in range(4):
            assert tlb.count(cpu, asid) == sum(1 for k in model if k[:2] == (cpu, asid))
            for vpn in range(0, 64):
                assert tlb.lookup(cpu, asid, vpn) == model.get((cpu, asid, vpn))
    for ppn in range(0, 36):
        holders = sorted(k for k, p in model.items() if p == ppn)
        assert tlb.holders(ppn) == holders
        assert tlb.reaches(ppn) == bool(holders)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(OPS, max_size=40))
def test_range_tlb_matches_a_set_reference_model(ops: list[tuple]) -> None:
    """RangeTlb, which keeps ranges, caches the same (cpu, asid, vpn) set as
    the reference model, reports the same dropped counts in pages, keeps each ASID's
    ranges disjoint and non-empty, and covers() names the CPUs the set names."""
    tlb = RangeTlb(NCPU)
    model: dict[tuple[int, int, int], int] = {}
    for op in ops:
        assert _apply_to_tlb(tlb, op) == _apply_to_model(model, op), op
    for cpu in range(NCPU):
        assert tlb.count(cpu) == sum(1 for k in model if k[0] == cpu)
        for asid, space in tlb.ranges[cpu].items():
            spans = sorted(space.items())
            assert spans, (cpu, asid)
            assert all(s < e for s, e in spans)
            assert all(e1 <= s2 for (_, e1), (s2, _) in pairwise(spans))
        for asid in range(4):
            for vpn in range(0, 64):
                assert (tlb.lookup(cpu, asid, vpn) is not None) == ((cpu, asid, vpn) in model)
    for asid in range(4):
        for start, end in ((0, 64), (0, 10), (10, 20), (20, 64)):
            want = sorted({c for c, a, v in model if a == asid and start <= v < end})
            assert tlb.covers(asid, start, end) == want
