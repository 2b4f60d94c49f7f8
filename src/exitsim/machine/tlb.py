"""Per-CPU TLBs: translations tagged by address-space id (ASID), at two granularities.

``ExactTlb`` keeps every translation, (asid, virtual page) -> physical page, and a count
per physical page of how many translations anywhere reach it, so "may any TLB still
translate to this page?" (design.md invariant 1) is one lookup.

``RangeTlb`` keeps, per CPU and ASID, the virtual ranges that may be cached, without
the physical pages. It answers the same questions per range and counts pages, so the
cost of a run does not grow with the size of the address spaces it touches.

Both offer the same operations: fill on access, invalidate a page, a range, an ASID or
everything on one CPU. They hold state only; what an invalidation costs and who issues
it is the arch's business (``machine/arch.py``).
"""

from __future__ import annotations

from sortedcontainers import SortedDict


class ExactTlb:
    """Every translation, per CPU: ``entries[cpu][asid][vpn] = ppn``."""

    __slots__ = ("entries", "refs")

    def __init__(self, ncpu: int) -> None:
        self.entries: list[dict[int, dict[int, int]]] = [{} for _ in range(ncpu)]
        # ppn -> how many translations on any CPU lead to it.
        self.refs: dict[int, int] = {}

    def fill(self, cpu: int, asid: int, vpn: int, ppn: int, npages: int = 1) -> None:
        """A page walk on ``cpu`` cached ``npages`` translations from ``vpn`` on."""
        space = self.entries[cpu].setdefault(asid, {})
        refs = self.refs
        for i in range(npages):
            old = space.get(vpn + i)
            if old is not None:
                self._unref(old)
            space[vpn + i] = ppn + i
            refs[ppn + i] = refs.get(ppn + i, 0) + 1

    def lookup(self, cpu: int, asid: int, vpn: int) -> int | None:
        space = self.entries[cpu].get(asid)
        return space.get(vpn) if space else None

    def _unref(self, ppn: int) -> None:
        n = self.refs[ppn] - 1
        if n:
            self.refs[ppn] = n
        else:
            del self.refs[ppn]

    def invalidate_page(self, cpu: int, asid: int, vpn: int) -> int:
        return self.invalidate_range(cpu, asid, vpn, vpn + 1)

    def invalidate_range(self, cpu: int, asid: int, start: int, end: int) -> int:
        """Drop translations of pages [start, end) of ``asid``; returns how many."""
        space = self.entries[cpu].get(asid)
        if not space:
            return 0
        if end - start <= len(space):
            victims = [v for v in range(start, end) if v in space]
        else:
            victims = [v for v in space if start <= v < end]
        for v in victims:
            self._unref(space.pop(v))
        if not space:
            del self.entries[cpu][asid]
        return len(victims)

    def invalidate_asid(self, cpu: int, asid: int) -> int:
        space = self.entries[cpu].pop(asid, None)
        if not space:
            return 0
        for ppn in space.values():
            self._unref(ppn)
        return len(space)

    def invalidate_all(self, cpu: int) -> int:
        n = 0
        for asid in sorted(self.entries[cpu]):
            n += self.invalidate_asid(cpu, asid)
        return n

    def count(self, cpu: int, asid: int | None = None) -> int:
        """Translations cached on ``cpu`` (for one ASID, or all)."""
        if asid is None:
            return sum(len(s) for s in self.entries[cpu].values())
        return len(self.entries[cpu].get(asid, ()))

    def reaches(self, ppn: int, npages: int = 1) -> bool:
        """Whether any CPU's TLB may still translate some virtual page into the pages
        [ppn, ppn+npages)."""
        refs = self.refs
        if npages == 1:
            return ppn in refs
        return any(p in refs for p in range(ppn, ppn + npages))

    def holders(self, ppn: int, npages: int = 1) -> list[tuple[int, int, int]]:
        """Every (cpu, asid, vpn) whose translation leads into the pages, in order."""
        if not self.reaches(ppn, npages):
            return []
        out = []
        for cpu, spaces in enumerate(self.entries):
            for asid in sorted(spaces):
                out.extend(
                    (cpu, asid, v)
                    for v, p in sorted(spaces[asid].items())
                    if ppn <= p < ppn + npages
                )
        return out


class RangeTlb:
    """Cached virtual ranges per CPU and ASID: ``ranges[cpu][asid][start] = end``, with
    the physical page the range starts at in ``phys[cpu][asid][start]``.

    The ranges of one ASID on one CPU never overlap; a fill over an existing range
    replaces the overlap. Counts are in pages. A fill always covers part of one page run
    (one allocation of contiguous pages), so "may a TLB reach the run [p, p+n)?" is
    whether some cached range starts inside it: ``rev`` counts cached ranges by their
    first physical page, in order.
    """

    __slots__ = ("phys", "ranges", "rev")

    def __init__(self, ncpu: int) -> None:
        self.ranges: list[dict[int, dict[int, int]]] = [{} for _ in range(ncpu)]
        self.phys: list[dict[int, dict[int, int]]] = [{} for _ in range(ncpu)]
        self.rev: SortedDict = SortedDict()

    def _add(self, cpu: int, asid: int, s: int, e: int, p: int) -> None:
        self.ranges[cpu].setdefault(asid, {})[s] = e
        self.phys[cpu].setdefault(asid, {})[s] = p
        self.rev[p] = self.rev.get(p, 0) + 1

    def _drop(self, cpu: int, asid: int, s: int) -> tuple[int, int]:
        e = self.ranges[cpu][asid].pop(s)
        p = self.phys[cpu][asid].pop(s)
        n = self.rev[p] - 1
        if n:
            self.rev[p] = n
        else:
            del self.rev[p]
        return e, p

    def fill(self, cpu: int, asid: int, vpn: int, ppn: int = 0, npages: int = 1) -> None:
        """Cache ``npages`` translations from ``vpn`` to ``ppn`` on."""
        if npages <= 0:
            return
        self.invalidate_range(cpu, asid, vpn, vpn + npages)
        self._add(cpu, asid, vpn, vpn + npages, ppn)

    def lookup(self, cpu: int, asid: int, vpn: int) -> int | None:
        """The physical page ``vpn`` translates to, if cached."""
        space = self.ranges[cpu].get(asid)
        if not space:
            return None
        for s, e in space.items():
            if s <= vpn < e:
                return self.phys[cpu][asid][s] + (vpn - s)
        return None

    def invalidate_page(self, cpu: int, asid: int, vpn: int) -> int:
        return self.invalidate_range(cpu, asid, vpn, vpn + 1)

    def invalidate_range(self, cpu: int, asid: int, start: int, end: int) -> int:
        space = self.ranges[cpu].get(asid)
        if not space or end <= start:
            return 0
        dropped = 0
        for s in sorted(space):
            e = space[s]
            if e <= start or s >= end:
                continue
            _, p = self._drop(cpu, asid, s)
            dropped += min(e, end) - max(s, start)
            if s < start:
                self._add(cpu, asid, s, start, p)
            if e > end:
                self._add(cpu, asid, end, e, p + (end - s))
        if not space:
            del self.ranges[cpu][asid]
            del self.phys[cpu][asid]
        return dropped

    def invalidate_asid(self, cpu: int, asid: int) -> int:
        space = self.ranges[cpu].get(asid)
        if not space:
            return 0
        n = 0
        for s in sorted(space):
            e, _ = self._drop(cpu, asid, s)
            n += e - s
        del self.ranges[cpu][asid]
        del self.phys[cpu][asid]
        return n

    def invalidate_all(self, cpu: int) -> int:
        n = 0
        for asid in sorted(self.ranges[cpu]):
            n += self.invalidate_asid(cpu, asid)
        return n

    def count(self, cpu: int, asid: int | None = None) -> int:
        spaces = self.ranges[cpu]
        if asid is None:
            return sum(e - s for sp in spaces.values() for s, e in sp.items())
        return sum(e - s for s, e in spaces.get(asid, {}).items())

    def covers(self, asid: int, start: int, end: int) -> list[int]:
        """CPUs whose TLB may hold a translation of [start, end) of ``asid``."""
        out = []
        for cpu, spaces in enumerate(self.ranges):
            sp = spaces.get(asid)
            if sp and any(s < end and e > start for s, e in sp.items()):
                out.append(cpu)
        return out

    def reaches(self, ppn: int, npages: int = 1) -> bool:
        """Whether any CPU's TLB may translate into the page run [ppn, ppn+npages)."""
        return next(iter(self.rev.irange(ppn, ppn + npages - 1)), None) is not None

    def holders(self, ppn: int, npages: int = 1) -> list[tuple[int, int, int]]:
        """(cpu, asid, vpn) of every cached range reaching into the run, in order."""
        if not self.reaches(ppn, npages):
            return []
        out = []
        for cpu in range(len(self.ranges)):
            for asid in sorted(self.phys[cpu]):
                for s, p in sorted(self.phys[cpu][asid].items()):
                    if ppn <= p < ppn + npages:
                        out.append((cpu, asid, s))
        return out


Tlb = ExactTlb | RangeTlb


def make_tlb(granularity: str, ncpu: int) -> Tlb:
    """The TLB model for ``granularity`` ("exact" or "range")."""
    if granularity == "exact":
        return ExactTlb(ncpu)
    if granularity == "range":
        return RangeTlb(ncpu)
    raise ValueError(f"granularity must be exact or range (got {granularity!r})")
