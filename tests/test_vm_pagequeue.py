"""The page-queue lock, the per-CPU page magazines and the cost of freeing into the
pmemrange trees (vm/page.py; uvm_page.c 1.183, uvm_pmemrange.c 1.77, uvm_percpu.h 1.1,
uvm_fault.c 1.171, uvm_amap.c 1.97, uvm_aobj.c 1.116).

- A fault puts the page it maps on the active queue under ``pageqlock`` (twice for an
  object page), and ``uvm_pageclean`` takes ``pageqlock`` once for every queued page a
  teardown frees, never for a page-table page.
- Allocation takes pages from this CPU's two magazines of 8 without ``fpageqlock``; only
  a refill takes it. On amd64 a freed page goes into a magazine and only a full one sends
  the other to the trees; on arm64 every page goes to the trees, one lock hold each.
- ``uvm_pmr_freepageq`` holds ``fpageqlock`` for the page work plus one tree insert per
  range, each ``pmr_insert_ns * ceil(log2(ranges + 1))``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from exitsim.engine.thread import Thread
from exitsim.vm.fault import uvm_fault
from exitsim.vm.page import (
    ANON,
    FREE_RANGE_PAGES,
    MIN_PAGES_PER_RANGE,
    PTP,
    UVM_PMR_CACHEMAGSZ,
    PhysMem,
    VmPage,
    uvm_pagealloc,
    uvm_pagefree,
    uvm_pglistfree,
)
from exitsim.vm.shm import shmat, shmctl_rmid, shmget
from tests.test_vm_teardown import (
    ANON_VA,
    SHM_VA,
    TEXT_VA,
    Flags,
    exit_process,
    make_kit,
    map_anon,
    map_text,
    start_process,
)
from tests.vmkit import Body, VmKit

ARCHES = ["amd64", "arm64"]


def _acq(kit: VmKit, lock: str) -> int:
    return kit.uvm.locks[lock].stats.acquisitions


# -- the page-queue lock ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_two_concurrent_purges_contend_on_the_page_queue_lock(arch: str) -> None:
    """Two processes on two CPUs, each with four 16-page anon mappings, exit at the same
    moment: each purge takes ``pageqlock`` for every anon page it frees
    (uvm_pageclean), so they wait for each other there. Only the purges run in the
    window measured: the faults before it are serialized by flags. (On arm64 every
    free also takes ``fpageqlock``, and the two purges fall into step behind it; the
    entry boundaries break the step now and then.)"""
    kit = make_kit(arch)
    flags = Flags()
    npages = 64
    seen: dict[str, Any] = {}

    def proc(me: Thread, name: str, other: str) -> Body:
        if name == "B":
            yield from flags.wait("A mapped")
        vm = yield from start_process(kit, me, name)
        for off in range(0, npages, 16):
            yield from map_anon(kit, me, vm, ANON_VA + 4 * off, 16)
        yield from flags.set(kit, f"{name} mapped")
        yield from flags.wait(f"{other} mapped")
        if name == "A":
            st = kit.uvm.pageqlock.stats
            seen["before"] = (st.contended, st.wait_ns, st.acquisitions)
        yield from exit_process(kit, me, vm)

    kit.spawn("A", proc, "A", "B")
    kit.spawn("B", proc, "B", "A")
    kit.run()
    st = kit.uvm.pageqlock.stats
    contended0, wait0, acq0 = seen["before"]
    assert st.acquisitions - acq0 == 2 * npages  # one per freed anon page
    assert st.contended - contended0 > 0
    assert st.wait_ns - wait0 > 0
    assert "pageqlock" in kit.uvm.locks


@pytest.mark.parametrize("arch", ARCHES)
def test_teardown_takes_the_page_queue_lock_once_per_queued_page_never_for_a_ptp(
    arch: str,
) -> None:
    """Exact granularity. A fault activates the page it maps under ``pageqlock``: once
    for a zero-filled anon page or a shm page, twice for a file page (found, then
    mapped). The exit frees the anon pages and, with the removed segment's last
    reference, the shm pages: one ``pageqlock`` round trip each. The page-table pages it
    frees are on no queue and take none; the cached file pages are not freed."""
    kit = make_kit(arch)
    n_anon, n_shm, n_text = 8, 4, 3
    out: dict[str, int] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        a0 = _acq(kit, "pageqlock")
        yield from map_anon(kit, me, vm, ANON_VA, n_anon)
        out["anon_faults"] = _acq(kit, "pageqlock") - a0
        a0 = _acq(kit, "pageqlock")
        yield from map_text(kit, me, vm, TEXT_VA, n_text, "bin")
        out["text_faults"] = _acq(kit, "pageqlock") - a0
        seg = shmget(kit.uvm, n_shm)
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        a0 = _acq(kit, "pageqlock")
        yield from uvm_fault(kit.uvm, me, vm, SHM_VA, n_shm, write=True)
        out["shm_faults"] = _acq(kit, "pageqlock") - a0
        yield from shmctl_rmid(kit.uvm, me, seg)
        a0 = _acq(kit, "pageqlock")
        ptp0 = kit.uvm.physmem.in_use[PTP]
        freed0 = kit.uvm.counters.pages_freed
        yield from exit_process(kit, me, vm)
        out["exit"] = _acq(kit, "pageqlock") - a0
        out["ptp_freed"] = ptp0 - kit.uvm.physmem.in_use[PTP]
        out["freed"] = kit.uvm.counters.pages_freed - freed0

    kit.spawn("A", proc)
    kit.run()
    assert out["anon_faults"] == n_anon
    assert out["text_faults"] == 2 * n_text
    assert out["shm_faults"] == 2 * n_shm
    assert out["ptp_freed"] > 0
    assert out["freed"] == n_anon + n_shm + out["ptp_freed"]
    assert out["exit"] == n_anon + n_shm


# -- the per-CPU magazines --------------------------------------------------------------


def _alloc_then_free(arch: str, n: int) -> tuple[list[int], list[int], Any]:
    """One thread allocates ``n`` pages one at a time, then frees them one at a time;
    ``fpageqlock`` acquisitions counted after each step."""
    kit = make_kit(arch)
    after_alloc: list[int] = []
    after_free: list[int] = []

    def body(me: Thread) -> Body:
        pages: list[VmPage] = []
        for _ in range(n):
            pg = yield from uvm_pagealloc(kit.uvm, me, ANON, None)
            pages.append(pg)
            after_alloc.append(_acq(kit, "fpageqlock"))
        for pg in pages:
            yield from uvm_pagefree(kit.uvm, me, pg)
            after_free.append(_acq(kit, "fpageqlock"))

    kit.spawn("A", body)
    kit.run()
    return after_alloc, after_free, kit


@pytest.mark.parametrize("arch", ARCHES)
def test_allocation_takes_the_free_page_lock_only_to_refill_a_magazine(arch: str) -> None:
    """uvm_pmr_cache_get: the first allocation finds both magazines empty and refills
    one (8 pages, one ``fpageqlock`` hold); the next 7 come from it without the lock;
    the 9th and the 17th refill again."""
    after_alloc, _, kit = _alloc_then_free(arch, 20)
    refills_at = [i + 1 for i in range(20) if after_alloc[i] != (after_alloc[i - 1] if i else 0)]
    assert refills_at == [1, 9, 17]
    assert after_alloc[-1] == 3
    cache = kit.uvm.pmr_cache[0]
    assert cache.refills == 3
    assert kit.uvm.physmem.cached == cache.pages


def test_amd64_frees_into_the_magazines_and_empties_one_into_the_trees_when_full() -> None:
    """uvm_pmr_cache_put on amd64: after 20 allocations the active magazine holds 4;
    4 frees fill it, the 5th swaps in the empty one, the 13th finds it full and sends
    the other (8 pages) to the trees in one ``fpageqlock`` hold."""
    after_alloc, after_free, kit = _alloc_then_free("amd64", 20)
    base = after_alloc[-1]
    takes = [i + 1 for i in range(20) if after_free[i] != (after_free[i - 1] if i else base)]
    assert takes == [13]
    cache = kit.uvm.pmr_cache[0]
    assert (cache.actv, cache.prev, cache.drains) == (8, 8, 1)
    assert kit.uvm.physmem.cached == 16
    assert kit.uvm.physmem.inserted == UVM_PMR_CACHEMAGSZ


def test_arm64_frees_every_page_into_the_trees_with_its_own_lock_hold() -> None:
    """arm64 machdep.c 1.96 puts all memory under dma_constraint, so every pmemrange has
    a use count and uvm_pmr_cache_put calls uvm_pmr_freepages(pg, 1): one ``fpageqlock``
    hold per page freed, the magazines untouched."""
    after_alloc, after_free, kit = _alloc_then_free("arm64", 20)
    base = after_alloc[-1]
    assert [a - base for a in after_free] == list(range(1, 21))
    cache = kit.uvm.pmr_cache[0]
    assert (cache.actv, cache.prev, cache.drains) == (4, 0, 0)
    assert kit.uvm.physmem.inserted == 20


# -- the cost of freeing into the trees -------------------------------------------------


def _freepageq_hold(ranges: int, npages: int, total: int = 1 << 30) -> tuple[int, int, int]:
    """Free ``npages`` page-table pages in one uvm_pglistfree on a machine of ``total``
    pages whose trees hold ``ranges`` free ranges: the ``fpageqlock`` hold of that free,
    its acquisitions, and the ranges after."""
    kit = make_kit("amd64")
    kit.uvm.physmem = PhysMem(total, ranges=ranges)
    out: dict[str, int] = {}

    def body(me: Thread) -> Body:
        pages = []
        for _ in range(npages):
            pg = yield from uvm_pagealloc(kit.uvm, me, PTP, None)
            pages.append(pg)
        st = kit.uvm.fpageqlock.stats
        hold0, acq0 = st.hold_ns, st.acquisitions
        yield from uvm_pglistfree(kit.uvm, me, pages)
        out["hold"] = st.hold_ns - hold0
        out["acq"] = st.acquisitions - acq0

    kit.spawn("A", body)
    kit.run()
    return out["hold"], out["acq"], kit.uvm.physmem.ranges


@pytest.mark.parametrize("ranges", [1, 1000, 1 << 20])
def test_a_page_list_free_holds_the_free_page_lock_for_its_pages_and_log_sized_inserts(
    ranges: int,
) -> None:
    """uvm_pmr_freepageq: one hold of ``fpageqlock`` for the whole list, for the page
    work and one insert per new range (one per FREE_RANGE_PAGES pages), each insert
    ``pmr_insert_ns * ceil(log2(r + 1))`` for the r ranges already there."""
    npages = 64
    hold, acq, after = _freepageq_hold(ranges, npages)
    c = make_kit("amd64").machine.costs
    inserts = npages // FREE_RANGE_PAGES
    levels = sum(math.ceil(math.log2(ranges + i + 1)) for i in range(inserts))
    assert acq == 1
    assert hold == c.page_free_ns * npages + c.pmr_insert_ns * levels
    assert after == ranges + inserts


def test_the_free_cost_grows_with_the_log_of_the_number_of_free_ranges() -> None:
    """The same free costs more in trees of more ranges, by ``pmr_insert_ns`` per extra
    tree level per insert: 1 range vs 2**10 vs 2**20 (levels 1-5, 11, 21)."""
    npages = 64
    inserts = npages // FREE_RANGE_PAGES
    c = make_kit("amd64").machine.costs
    small, _, _ = _freepageq_hold(1, npages)
    mid, _, _ = _freepageq_hold(1 << 10, npages)
    big, _, _ = _freepageq_hold(1 << 20, npages)
    assert small < mid < big
    # 1..16 ranges before the inserts: 54 levels in all; 2**10: 11 each; 2**20: 21 each.
    assert mid - small == c.pmr_insert_ns * (inserts * 11 - 54)
    # 1024 times the ranges adds ten levels per insert: logarithmic, not linear.
    assert big - mid == c.pmr_insert_ns * inserts * (21 - 11)


def test_the_free_ranges_stop_growing_at_one_per_mib_of_memory() -> None:
    """The trees never hold more than ``total // MIN_PAGES_PER_RANGE`` ranges: on a
    machine of 100 MiB with 90 ranges, 16 inserts take them to 100 and no further, and
    each insert walks the levels of at most 100 ranges (7)."""
    npages = 64
    total = 100 * MIN_PAGES_PER_RANGE
    hold, _, after = _freepageq_hold(90, npages, total)
    c = make_kit("amd64").machine.costs
    assert after == 100
    assert hold == c.page_free_ns * npages + c.pmr_insert_ns * 7 * (npages // FREE_RANGE_PAGES)


# -- exact and range granularity ---------------------------------------------------------


def _one_exit(arch: str, granularity: str) -> dict[str, Any]:
    """One process with anon memory, program text and a removed shm segment faults it
    all in and exits, alone on the machine."""
    kit = VmKit(arch, 2, granularity)

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 37)
        yield from map_text(kit, me, vm, TEXT_VA, 11, "bin")
        seg = shmget(kit.uvm, 13)
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        yield from uvm_fault(kit.uvm, me, vm, SHM_VA, 13, write=True)
        yield from shmctl_rmid(kit.uvm, me, seg)
        yield from exit_process(kit, me, vm)

    t = kit.spawn("A", proc)
    kit.run()
    pm = kit.uvm.physmem
    caches = kit.uvm.pmr_cache
    return {
        "sys_ns": t.sys_ns,
        "pageq_hold": kit.uvm.pageqlock.stats.hold_ns,
        "fpageq_hold": kit.uvm.fpageqlock.stats.hold_ns,
        "ranges": pm.ranges,
        "free": pm.free,
        "cached": pm.cached,
        "inserted": pm.inserted,
        "taken": pm.taken,
        "magazines": [(c.actv, c.prev, c.refills, c.drains) for c in caches],
    }


@pytest.mark.parametrize("arch", ARCHES)
def test_exact_and_range_granularity_agree_on_the_page_queue_magazines_and_trees(
    arch: str,
) -> None:
    """A range-mode run stands for the page-by-page one: the same lock hold times, sys
    time, magazines, ranges and free counts, though locks are taken per run."""
    exact = _one_exit(arch, "exact")
    ranged = _one_exit(arch, "range")
    assert exact == ranged
    assert exact["pageq_hold"] > 0 and exact["fpageq_hold"] > 0
