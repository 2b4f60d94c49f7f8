"""The arches' TLB maintenance (machine/arch.py) and the Machine (machine/machine.py),
driven inside engine threads.

amd64 (openbsd-exit-path.md section 6, pmap.c 1.182): no broadcast; shootdown IPIs go
only to CPUs where the pmap is active, the initiator spins in pmap_tlb_shootwait until
every target acknowledged, and a user range over 32 pages is flushed whole.

arm64 (section 5, pmap.c 1.113): ttlb_flush issues two broadcast ``tlbi vae1is`` per
page, one per ASID of the pair, with no interrupt; cpu_tlb_flush_asid_all is one
``tlbi aside1is`` per ASID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from exitsim.engine.ops import USER, Op, Run
from exitsim.engine.sched import Engine
from exitsim.engine.thread import Thread
from exitsim.machine.arch import (
    ARCHES,
    cpu_tlb_flush_asid_all,
    pmap_tlb_shootrange,
    pmap_tlb_shoottlb,
    ttlb_flush_range,
)
from exitsim.machine.costs import CostProfileError, builtin_profile
from exitsim.machine.machine import Machine

GRANULARITIES = ["exact", "range"]

#: The user pmap being torn down, and an unrelated one that must not be touched.
ASID = 6
OTHER = 9
#: Pages cached per ASID on every CPU before each test: [0, SPAN).
SPAN = 64


@pytest.fixture(params=GRANULARITIES)
def granularity(request: pytest.FixtureRequest) -> str:
    return request.param


def ppn_of(asid: int, vpn: int) -> int:
    """The physical page behind (asid, vpn): the same on every CPU, distinct per ASID."""
    return 10_000 * asid + vpn


def warm(m: Machine, asids: tuple[int, ...]) -> None:
    """Every CPU has touched pages [0, SPAN) of each ASID."""
    for cpu in range(m.ncpu):
        for asid in asids:
            m.tlb.fill(cpu, asid, 0, ppn_of(asid, 0), npages=SPAN)


def cached(m: Machine, cpu: int, asid: int, start: int = 0, end: int = SPAN) -> list[int]:
    """The pages of [start, end) of ``asid`` that ``cpu``'s TLB may still hold."""
    out = []
    for v in range(start, end):
        r = m.tlb.lookup(cpu, asid, v)
        if r is not None and r is not False:
            out.append(v)
    return out


class Sim:
    """An engine built from ``machine.engine_config()`` running generator threads; each
    thread's [start, end) time of its TLB work is recorded."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.eng = Engine(m.engine_config())
        self.spans: dict[str, tuple[int, int]] = {}
        self.after: dict[str, object] = {}
        self.threads: dict[str, Thread] = {}

    def spawn(
        self,
        name: str,
        work: Callable[[], Iterator[Op]],
        check: Callable[[], object] | None = None,
    ) -> Thread:
        """Spawn a thread doing ``work``; ``check()`` runs right when the work is done
        (before any other CPU moves on), its value kept in ``after[name]``."""

        def body() -> Iterator[Op]:
            t0 = self.eng.now
            yield from work()
            self.spans[name] = (t0, self.eng.now)
            if check is not None:
                self.after[name] = check()

        t = self.eng.spawn(name, body())
        self.threads[name] = t
        return t

    def go(self) -> None:
        self.eng.run()
        self.eng.finish()

    def elapsed(self, name: str) -> int:
        t0, t1 = self.spans[name]
        return t1 - t0


# -- amd64: shootdowns by IPI ------------------------------------------------------------


def test_pmap_tlb_shootrange_interrupts_only_cpus_where_the_pmap_is_active(
    granularity: str,
) -> None:
    """amd64 pmap_tlb_shootrange: IPIs go only to the other CPUs with the pmap active
    (T4); the range of that ASID vanishes here (shootself) and on the targets, while a
    CPU that was not a target keeps its entries, as does every other ASID."""
    m = Machine("amd64", 4, granularity)
    warm(m, (ASID, OTHER))
    r = Sim(m)
    t = r.spawn("exit", lambda: pmap_tlb_shootrange(m, 0, ASID, 8, 24, (1, 2), True))
    r.go()
    assert t.last_cpu == 0
    assert m.stats.ipis == 2
    assert r.eng.ipis == 2
    assert m.stats.page_invalidations == 16
    assert m.stats.full_flushes == 0
    assert m.stats.broadcasts == 0
    kept = [*range(0, 8), *range(24, SPAN)]
    for cpu in (0, 1, 2):
        assert cached(m, cpu, ASID) == kept, cpu
    assert cached(m, 3, ASID) == list(range(SPAN))
    for cpu in range(4):
        assert cached(m, cpu, OTHER) == list(range(SPAN)), cpu


def test_pmap_tlb_shootwait_spins_until_every_target_acknowledged(granularity: str) -> None:
    """amd64 pmap_tlb_shootwait: the initiator spins until each target ran its handler
    and acknowledged, so when it returns the targets' entries are gone and its thread
    was charged at least IPI latency + handler time as spin (inside sys)."""
    m = Machine("amd64", 4, granularity)
    warm(m, (ASID,))
    c = m.costs
    npages = 10
    r = Sim(m)
    t = r.spawn(
        "exit",
        lambda: pmap_tlb_shootrange(m, 0, ASID, 0, npages, (1, 2, 3), True),
        check=lambda: [cached(m, cpu, ASID, 0, npages) for cpu in range(4)],
    )
    r.go()
    handler = c.ipi_handler_ns + c.tlb_local_page_ns * npages
    assert r.after["exit"] == [[], [], [], []]
    assert t.spin_ns >= c.ipi_latency_ns + handler
    local = c.tlb_local_page_ns * npages
    send = c.ipi_send_ns * 3
    assert r.elapsed("exit") >= local + send + c.ipi_latency_ns + handler
    assert t.sys_ns >= local + send + c.ipi_latency_ns + handler
    assert t.sys_ns >= t.spin_ns


def test_pmap_tlb_shootrange_without_targets_sends_no_ipi_and_invalidates_locally(
    granularity: str,
) -> None:
    """amd64: if no other CPU has the pmap active, no IPI is sent and there is no wait;
    only the local invalidation is done (shootself), one invlpg per page."""
    m = Machine("amd64", 3, granularity)
    warm(m, (ASID,))
    c = m.costs
    r = Sim(m)
    t = r.spawn("exit", lambda: pmap_tlb_shootrange(m, 0, ASID, 0, 16, (), True))
    r.go()
    assert m.stats.ipis == 0
    assert r.eng.ipis == 0
    assert m.stats.page_invalidations == 16
    assert t.spin_ns == 0
    assert r.elapsed("exit") == 16 * c.tlb_local_page_ns
    assert cached(m, 0, ASID) == list(range(16, SPAN))
    assert cached(m, 1, ASID) == list(range(SPAN))
    assert cached(m, 2, ASID) == list(range(SPAN))


def test_pmap_tlb_shootrange_without_shootself_leaves_the_local_tlb(granularity: str) -> None:
    """amd64: the local CPU invalidates only if the pmap is loaded there (shootself);
    the IPI targets still are shot."""
    m = Machine("amd64", 3, granularity)
    warm(m, (ASID,))
    r = Sim(m)
    r.spawn("unmap", lambda: pmap_tlb_shootrange(m, 0, ASID, 0, 4, (2,), False))
    r.go()
    assert m.stats.page_invalidations == 0
    assert m.stats.ipis == 1
    assert cached(m, 0, ASID) == list(range(SPAN))
    assert cached(m, 1, ASID) == list(range(SPAN))
    assert cached(m, 2, ASID) == list(range(4, SPAN))


def test_pmap_do_remove_flushes_a_user_range_over_32_pages_whole(granularity: str) -> None:
    """amd64 pmap_do_remove: shootall when eva - sva > 32 pages: one full flush of the
    ASID here and on each target, no per-page invalidation; other ASIDs survive."""
    m = Machine("amd64", 3, granularity)
    warm(m, (ASID, OTHER))
    c = m.costs
    r = Sim(m)
    r.spawn("exit", lambda: pmap_tlb_shootrange(m, 0, ASID, 0, 33, (1,), True))
    r.go()
    assert m.arch.shootall_pages == 32
    assert m.stats.full_flushes == 1
    assert m.stats.page_invalidations == 0
    assert m.stats.ipis == 1
    assert m.tlb.count(0, ASID) == 0
    assert m.tlb.count(1, ASID) == 0
    assert cached(m, 2, ASID) == list(range(SPAN))
    for cpu in range(3):
        assert m.tlb.count(cpu, OTHER) == SPAN
    assert r.elapsed("exit") >= (
        c.tlb_local_flush_ns
        + c.ipi_send_ns
        + c.ipi_latency_ns
        + c.ipi_handler_ns
        + c.tlb_local_flush_ns
    )


def test_pmap_do_remove_invalidates_a_32_page_range_page_by_page(granularity: str) -> None:
    """amd64 pmap_do_remove: exactly 32 pages is not over the limit: 32 invlpg locally,
    pages outside the range stay cached."""
    m = Machine("amd64", 2, granularity)
    warm(m, (ASID,))
    c = m.costs
    r = Sim(m)
    r.spawn("exit", lambda: pmap_tlb_shootrange(m, 0, ASID, 0, 32, (), True))
    r.go()
    assert m.stats.page_invalidations == 32
    assert m.stats.full_flushes == 0
    assert r.elapsed("exit") == 32 * c.tlb_local_page_ns
    assert cached(m, 0, ASID) == list(range(32, SPAN))


def test_pmap_tlb_shoottlb_flushes_the_asid_here_and_on_targets(granularity: str) -> None:
    """amd64 pmap_tlb_shoottlb: a full flush of the pmap locally and by IPI on the CPUs
    where it is active."""
    m = Machine("amd64", 3, granularity)
    warm(m, (ASID, OTHER))
    r = Sim(m)
    r.spawn("exit", lambda: pmap_tlb_shoottlb(m, 0, ASID, (2,), True))
    r.go()
    assert m.stats.full_flushes == 1
    assert m.stats.ipis == 1
    assert [m.tlb.count(cpu, ASID) for cpu in range(3)] == [0, SPAN, 0]
    assert [m.tlb.count(cpu, OTHER) for cpu in range(3)] == [SPAN, SPAN, SPAN]


def test_exact_tlb_no_longer_reaches_shot_pages_after_shootwait() -> None:
    """amd64, invariant T1: once shootwait returns, no TLB may translate to the pages
    of the shot range, so they may be freed; pages outside it are still reachable."""
    m = Machine("amd64", 3, "exact")
    for cpu in range(3):
        m.tlb.fill(cpu, ASID, 0, ppn_of(ASID, 0), npages=8)
    r = Sim(m)
    r.spawn(
        "exit",
        lambda: pmap_tlb_shootrange(m, 0, ASID, 0, 4, (1, 2), True),
        check=lambda: [m.tlb.reaches(ppn_of(ASID, v)) for v in range(8)],
    )
    r.go()
    assert r.after["exit"] == [False] * 4 + [True] * 4


# -- arm64: broadcast TLBI ---------------------------------------------------------------


@pytest.mark.parametrize("npages", [1, 5, 40])
def test_ttlb_flush_issues_two_broadcast_tlbis_per_page_and_no_ipi(
    granularity: str, npages: int
) -> None:
    """arm64 ttlb_flush: a user pmap gets two tlbi vae1is per page, one per ASID of
    the pair (a, a|ASID_USER), by hardware broadcast: no interrupt is sent."""
    m = Machine("arm64", 4, granularity)
    pair = (ASID & ~1, ASID | 1)
    r = Sim(m)
    r.spawn("exit", lambda: ttlb_flush_range(m, pair, 0, npages))
    r.go()
    assert m.stats.broadcasts == 2 * npages
    assert m.stats.page_invalidations == 2 * npages
    assert r.eng.broadcasts == 2 * npages
    assert m.stats.ipis == 0
    assert r.eng.ipis == 0


def test_ttlb_flush_costs_a_lone_sender_one_tlbi_each(granularity: str) -> None:
    """arm64: with no other CPU broadcasting, each of the 2N TLBIs (with its dsb)
    costs the sender tlbi_ns of sys time, and it never spins."""
    m = Machine("arm64", 4, granularity)
    c = m.costs
    n = 12
    r = Sim(m)
    t = r.spawn("exit", lambda: ttlb_flush_range(m, (ASID & ~1, ASID | 1), 0, n))
    r.go()
    assert r.elapsed("exit") == 2 * n * c.tlbi_ns
    assert t.sys_ns == c.ctxsw_ns + 2 * n * c.tlbi_ns
    assert t.spin_ns == 0
    assert t.user_ns == 0


def test_ttlb_flush_leaves_no_cpu_holding_the_pages_for_either_asid(granularity: str) -> None:
    """arm64: after the trailing dsb ish, no CPU's TLB holds the flushed pages for
    either ASID of the pair; other pages and other ASIDs are untouched."""
    m = Machine("arm64", 4, granularity)
    pair = (ASID & ~1, ASID | 1)
    warm(m, (*pair, OTHER))
    r = Sim(m)
    r.spawn(
        "exit",
        lambda: ttlb_flush_range(m, pair, 10, 30),
        check=lambda: [cached(m, cpu, a, 10, 30) for cpu in range(4) for a in pair],
    )
    r.go()
    assert r.after["exit"] == [[]] * 8
    kept = [*range(0, 10), *range(30, SPAN)]
    for cpu in range(4):
        for a in pair:
            assert cached(m, cpu, a) == kept, (cpu, a)
        assert cached(m, cpu, OTHER) == list(range(SPAN)), cpu
    if granularity == "exact":
        assert not any(m.tlb.reaches(ppn_of(a, v)) for a in pair for v in range(10, 30))
        assert all(m.tlb.reaches(ppn_of(a, v)) for a in pair for v in (9, 30))
    else:
        for a in pair:
            assert m.tlb.covers(a, 10, 30) == []
            assert m.tlb.covers(a, 0, 11) == [0, 1, 2, 3]


def test_concurrent_tlbi_senders_each_pay_more_per_broadcast(granularity: str) -> None:
    """arm64 (cost-anchors row 10): broadcast TLBI latency grows with the number of CPUs
    broadcasting at once. Two CPUs flushing at the same time each pay
    tlbi_ns + tlbi_per_sender_ns per TLBI, not tlbi_ns."""
    m = Machine("arm64", 4, granularity)
    c = m.costs
    n = 10
    r = Sim(m)
    a = r.spawn("a", lambda: ttlb_flush_range(m, (2, 3), 0, n))
    b = r.spawn("b", lambda: ttlb_flush_range(m, (4, 5), 0, n))
    r.go()
    assert a.last_cpu != b.last_cpu
    assert r.spans["a"][0] == r.spans["b"][0]
    contended = 2 * n * (c.tlbi_ns + c.tlbi_per_sender_ns)
    assert (r.elapsed("a"), r.elapsed("b")) == (contended, contended)


def test_tlbi_sender_starting_during_another_broadcast_pays_the_contended_rate(
    granularity: str,
) -> None:
    """arm64 (cost-anchors row 10): while another CPU broadcasts, a CPU that starts
    broadcasting pays tlbi_ns + tlbi_per_sender_ns per TLBI."""
    m = Machine("arm64", 4, granularity)
    c = m.costs
    n = 10
    r = Sim(m)
    r.spawn("a", lambda: ttlb_flush_range(m, (2, 3), 0, n))
    r.spawn("b", lambda: ttlb_flush_range(m, (4, 5), 0, n))
    r.go()
    assert max(r.elapsed("a"), r.elapsed("b")) == 2 * n * (c.tlbi_ns + c.tlbi_per_sender_ns)
    assert m.stats.broadcasts == 4 * n


def test_a_broadcast_holds_up_a_cpu_running_user_code_by_receiver_ns_a_tlbi(
    granularity: str,
) -> None:
    """arm64: every core processes the invalidations another core broadcasts (Qi Fuli's
    ThunderX2 measurement, docs/model.md): a CPU running user code meanwhile loses
    tlbi_receiver_ns per TLBI, charged to that user time; the sender pays nothing more.
    An idle CPU loses nothing."""
    m = Machine("arm64", 4, granularity)
    c = m.costs
    assert c.tlbi_receiver_ns > 0
    n = 10
    work = 1_000_000
    r = Sim(m)
    r.spawn("sender", lambda: ttlb_flush_range(m, (2, 3), 0, n))
    r.spawn("user", lambda: iter([Run(work, USER)]))
    r.go()
    user = r.threads["user"]
    assert r.elapsed("user") == work + 2 * n * c.tlbi_receiver_ns
    assert user.user_ns == work + 2 * n * c.tlbi_receiver_ns
    assert r.elapsed("sender") == 2 * n * c.tlbi_ns
    # Without a receiver cost, the user run is untouched.
    m0 = Machine("arm64", 4, granularity)
    m0.costs = replace(m0.costs, tlbi_receiver_ns=0)
    r0 = Sim(m0)
    r0.spawn("sender", lambda: ttlb_flush_range(m0, (2, 3), 0, n))
    r0.spawn("user", lambda: iter([Run(work, USER)]))
    r0.go()
    assert r0.elapsed("user") == work


def test_a_concurrent_sender_is_not_held_up_as_a_receiver(granularity: str) -> None:
    """Two CPUs broadcasting at once pay the per-sender slope, not each other's
    receiver stall (that is what the slope measures)."""
    m = Machine("arm64", 4, granularity)
    c = m.costs
    n = 10
    r = Sim(m)
    r.spawn("a", lambda: ttlb_flush_range(m, (2, 3), 0, n))
    r.spawn("b", lambda: ttlb_flush_range(m, (4, 5), 0, n))
    r.go()
    assert r.threads["a"].sys_ns == r.threads["b"].sys_ns
    assert r.elapsed("a") == 2 * n * (c.tlbi_ns + c.tlbi_per_sender_ns)


def test_cpu_tlb_flush_asid_all_clears_both_asids_on_every_cpu(granularity: str) -> None:
    """arm64 pmap_purge: cpu_tlb_flush_asid_all for asid and asid|ASID_USER, one
    broadcast tlbi aside1is each, drops every page of both ASIDs on every CPU."""
    m = Machine("arm64", 3, granularity)
    c = m.costs
    pair = (ASID & ~1, ASID | 1)
    warm(m, (*pair, OTHER))
    r = Sim(m)
    r.spawn(
        "exit",
        lambda: cpu_tlb_flush_asid_all(m, pair),
        check=lambda: [m.tlb.count(cpu, a) for cpu in range(3) for a in pair],
    )
    r.go()
    assert r.after["exit"] == [0] * 6
    assert m.stats.asid_flushes == 2
    assert m.stats.broadcasts == 2
    assert m.stats.page_invalidations == 0
    assert m.stats.ipis == 0
    assert r.elapsed("exit") == 2 * c.tlbi_ns
    assert [m.tlb.count(cpu, OTHER) for cpu in range(3)] == [SPAN] * 3


def test_has_pmap_purge_only_on_arm64() -> None:
    """__HAVE_PMAP_PURGE: defined by arm64 pmap.h 1.29, not by amd64 (section 7)."""
    assert ARCHES["arm64"].has_pmap_purge is True
    assert ARCHES["amd64"].has_pmap_purge is False
    assert ARCHES["arm64"].broadcast_tlbi is True
    assert ARCHES["amd64"].broadcast_tlbi is False
    assert ARCHES["arm64"].tlbi_per_page == 2


# -- Machine -----------------------------------------------------------------------------


def test_machine_refuses_an_unknown_arch_naming_the_known_ones() -> None:
    """Only the modelled arches exist; the message lists them."""
    with pytest.raises(ValueError, match=r"unknown arch 'riscv64' \(known: amd64, arm64\)"):
        Machine("riscv64", 2)


def test_machine_refuses_an_unknown_granularity() -> None:
    """TLB granularity is exact or range."""
    with pytest.raises(ValueError, match=r"granularity must be exact or range \(got 'fine'\)"):
        Machine("amd64", 2, "fine")


@pytest.mark.parametrize("ncpu", [0, -1])
def test_machine_refuses_fewer_than_one_cpu(ncpu: int) -> None:
    """A machine has at least one CPU."""
    with pytest.raises(ValueError, match=rf"ncpu must be at least 1 \(got {ncpu}\)"):
        Machine("arm64", ncpu)


def test_machine_refuses_a_profile_for_another_arch() -> None:
    """A cost profile is for one arch; using arm64 numbers on amd64 is refused."""
    with pytest.raises(CostProfileError, match="profile is for arm64, not amd64"):
        Machine("amd64", 2, profile=builtin_profile("arm64"))


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_machine_engine_config_carries_the_profile_costs(arch: str, granularity: str) -> None:
    """The engine's quantum (sched_bsd.c roundrobin), switch cost and IPI latency come
    from the arch's profile; the CPU count from the machine."""
    m = Machine(arch, 3, granularity)
    cfg = m.engine_config()
    costs = builtin_profile(arch).costs
    assert cfg.ncpu == 3
    assert cfg.quantum_ns == costs.quantum_ns
    assert cfg.ctxsw_ns == costs.ctxsw_ns
    assert cfg.ipi_latency_ns == costs.ipi_latency_ns
    assert m.engine_config(ctxsw_ns=0).ctxsw_ns == 0
    assert m.arch is ARCHES[arch]
    assert m.granularity == granularity
    assert m.curpm == [None, None, None]
    assert [m.tlb.count(cpu) for cpu in range(3)] == [0, 0, 0]
