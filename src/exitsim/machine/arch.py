"""The two arch profiles and the TLB maintenance each one issues.

amd64 (OpenBSD amd64 pmap.c 1.182, openbsd-exit-path.md section 6): no hardware
broadcast. The initiator invalidates its own TLB if the pmap is loaded there
("shootself"), sends an IPI to every other running CPU where the pmap is active, and
spins in ``pmap_tlb_shootwait`` until each has acknowledged. A user range of more than
32 pages is flushed whole instead of page by page.

arm64 (OpenBSD arm64 pmap.c 1.113, section 5): ``tlbi ...is`` instructions reach every
CPU in the inner-shareable domain with no interrupt. A user pmap runs on an ASID pair,
so each page costs two of them; an address space is flushed with one ``aside1is`` per
ASID. The arch has ``pmap_purge``.

The functions here are generators that yield engine ops; the TLB state changes when
the hardware would have finished (after the acks, after the ``dsb``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.ops import Broadcast, Ipi, Run
from exitsim.engine.thread import KPath

if TYPE_CHECKING:
    from exitsim.machine.machine import Machine


@dataclass(frozen=True, slots=True)
class Arch:
    """What differs between the arches, as data."""

    name: str
    #: ``__HAVE_PMAP_PURGE`` (arm64 pmap.h 1.29; not amd64).
    has_pmap_purge: bool
    #: TLB invalidation reaches other CPUs by hardware broadcast (arm64) or IPI (amd64).
    broadcast_tlbi: bool
    #: Broadcast invalidations per page of a user pmap: one per ASID of the pair.
    tlbi_per_page: int
    #: A user range longer than this is flushed whole (amd64 pmap_do_remove: 32 pages).
    shootall_pages: int
    description: str


AMD64 = Arch(
    name="amd64",
    has_pmap_purge=False,
    broadcast_tlbi=False,
    tlbi_per_page=0,
    shootall_pages=32,
    description="shootdown IPIs to CPUs with the pmap active; full flush above 32 pages",
)

ARM64 = Arch(
    name="arm64",
    has_pmap_purge=True,
    broadcast_tlbi=True,
    tlbi_per_page=2,
    shootall_pages=0,
    description="broadcast TLBI, two per page (ASID pair); ASID flush; pmap_purge",
)

ARCHES: dict[str, Arch] = {a.name: a for a in (AMD64, ARM64)}


@dataclass(slots=True)
class TlbStats:
    """TLB work as instructions issued by the initiating CPU.

    ``page_invalidations``: per-page invalidations (local invlpg, or broadcast tlbi
    vae1is); ``asid_flushes``: whole-ASID flushes (tlbi aside1is, invpcid
    single-context); ``full_flushes``: amd64 shoot-all flushes of a user range;
    ``ipis``: shootdown IPIs sent; ``broadcasts``: broadcast TLBI instructions.
    """

    page_invalidations: int = 0
    asid_flushes: int = 0
    full_flushes: int = 0
    ipis: int = 0
    broadcasts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "page_invalidations": self.page_invalidations,
            "asid_flushes": self.asid_flushes,
            "full_flushes": self.full_flushes,
            "ipis": self.ipis,
            "broadcasts": self.broadcasts,
        }


# -- amd64 ---------------------------------------------------------------------------


def pmap_tlb_shootrange(
    m: Machine,
    cpu: int,
    asid: int,
    start: int,
    end: int,
    targets: tuple[int, ...],
    shootself: bool,
) -> KPath:
    """Invalidate pages [start, end) of ``asid`` here (if loaded here) and on
    ``targets``, then wait for every ack (``pmap_tlb_shootrange`` + ``shootwait``).
    Over ``shootall_pages`` it becomes ``pmap_tlb_shoottlb``: one flush each."""
    c = m.costs
    tlb = m.tlb
    npages = end - start
    if npages <= 0:
        return
    whole = npages > m.arch.shootall_pages
    if shootself:
        if whole:
            m.stats.full_flushes += 1
            yield Run(c.tlb_local_flush_ns)
            tlb.invalidate_asid(cpu, asid)
        else:
            m.stats.page_invalidations += npages
            yield Run(c.tlb_local_page_ns * npages)
            tlb.invalidate_range(cpu, asid, start, end)
    if targets:
        yield from _shoot(m, asid, start, end, targets, whole)


def pmap_tlb_shoottlb(
    m: Machine, cpu: int, asid: int, targets: tuple[int, ...], shootself: bool
) -> KPath:
    """Flush the whole of ``asid`` here (if loaded) and on ``targets``."""
    if shootself:
        m.stats.full_flushes += 1
        yield Run(m.costs.tlb_local_flush_ns)
        m.tlb.invalidate_asid(cpu, asid)
    if targets:
        yield from _shoot(m, asid, 0, 0, targets, True)


def _shoot(
    m: Machine, asid: int, start: int, end: int, targets: tuple[int, ...], whole: bool
) -> KPath:
    c = m.costs
    tlb = m.tlb
    m.stats.ipis += len(targets)
    yield Run(c.ipi_send_ns * len(targets))
    if whole:
        handler = c.ipi_handler_ns + c.tlb_local_flush_ns

        def action(target: int) -> None:
            tlb.invalidate_asid(target, asid)
    else:
        handler = c.ipi_handler_ns + c.tlb_local_page_ns * (end - start)

        def action(target: int) -> None:
            tlb.invalidate_range(target, asid, start, end)

    yield Ipi(targets, handler, action, "tlb_shoot")


# -- arm64 ---------------------------------------------------------------------------


def ttlb_flush_range(m: Machine, asids: tuple[int, ...], start: int, end: int) -> KPath:
    """Broadcast per-page invalidations of [start, end) for each ASID of the pair
    (``ttlb_flush`` per page: tlbi vae1is with dsb/isb)."""
    npages = end - start
    if npages <= 0:
        return
    count = npages * len(asids)
    m.stats.broadcasts += count
    m.stats.page_invalidations += count
    tlb = m.tlb
    ncpu = m.ncpu

    def action() -> None:
        for cpu in range(ncpu):
            for a in asids:
                tlb.invalidate_range(cpu, a, start, end)

    c = m.costs
    yield Broadcast(
        count, c.tlbi_ns, c.tlbi_per_sender_ns, action, "tlbi_vae1is", c.tlbi_receiver_ns
    )


def cpu_tlb_flush_asid_all(m: Machine, asids: tuple[int, ...]) -> KPath:
    """Broadcast a whole-ASID flush for each ASID given (tlbi aside1is)."""
    m.stats.broadcasts += len(asids)
    m.stats.asid_flushes += len(asids)
    tlb = m.tlb
    ncpu = m.ncpu

    def action() -> None:
        for cpu in range(ncpu):
            for a in asids:
                tlb.invalidate_asid(cpu, a)

    c = m.costs
    yield Broadcast(
        len(asids), c.tlbi_ns, c.tlbi_per_sender_ns, action, "tlbi_aside1is", c.tlbi_receiver_ns
    )
