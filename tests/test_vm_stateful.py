"""vm/ driven by random sequences of address-space operations, against a reference model.

A ``RuleBasedStateMachine`` keeps several processes alive at once and applies, each in a
short simulated thread bound to its process: anonymous and file ``mmap`` (private
read-write, private read-only "text", shared read-only), ``munmap`` of a whole mapping or
a piece of one, read and write faults, user accesses, ``fork`` with every inheritance
code, ``exec``, SysV ``shmget``/``shmat``/``shmdt``/``IPC_RMID`` and exit in the
committed order (``uvm_purge``, ``pmap_deactivate``, ``uvmspace_free``;
openbsd-exit-path.md 4.1, 4.6). One rule runs two processes at once, on both CPUs. A
process starts with a program mapped and partly touched (text, data, bss, a library),
and the machine starts with one such process and a child it forked.

Beside it runs a reference model built from dicts: for each live process, which virtual
pages it has mapped, how (anonymous, file, SysV segment) and which logical page ("cell")
each one reads through. A cell is shared by every process that must see the same memory
(``MAP_INHERIT_SHARE``, a SysV segment) and copied by ``MAP_INHERIT_COPY``; it holds a
content id that changes when the process writes (openbsd-exit-path.md 10.2, 10.3). After
every step the pmaps must agree with it: each mapped page holds the content the model
predicts, the same physical page for the same content and different pages for
different contents, and a writable translation only where no other cell can see the
page (copy-on-write). Alongside: design.md invariants 1, 2, 4 and 5 (the vm layer checks
1 and 2 itself when a page is freed), exact reference counts, resident counts and TLBs.

The plain tests at the end are what the model found in vm/, reduced: the first two the
state machine found, the third came up while deciding what it should leave out.

The harness models one thing the kit leaves out: when a process's thread leaves a CPU,
the CPU switches to its idle thread, which runs on the kernel's address space (amd64
``cpu_switchto`` loads its cr3, dropping the user translations; arm64 ``pmap_setttb``
points TTBR0 at the kernel's table). Without it a pmap would stay "loaded" on a CPU the
process left long ago, and its ``pmap_destroy`` would trip design.md invariant 5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from exitsim.engine.ops import USER, Run
from exitsim.engine.thread import KPath, Thread
from exitsim.vm.audit import audit_all_exited, audit_pages
from exitsim.vm.fault import user_tag, uvm_fault, uvm_touch
from exitsim.vm.map import (
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    PROT_EXEC,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    uvm_map,
    uvm_unmap,
)
from exitsim.vm.object import UvmObject, uvn_attach
from exitsim.vm.page import ANON
from exitsim.vm.pmap import pmap_activate
from exitsim.vm.shm import ShmSegment, shmat, shmctl_rmid, shmdt, shmget
from exitsim.vm.vmspace import (
    Vmspace,
    uvm_purge,
    uvmspace_alloc,
    uvmspace_exec,
    uvmspace_fork,
    uvmspace_free,
)
from tests.vmkit import VmKit

# -- the address-space layout the rules draw from ---------------------------------------

#: Where mappings go: slots of SLOT pages. A mapping (at most MAXPAGES pages) starts at
#: its slot's base, so a piece of it never reaches into the next slot. A mapping of
#: three pages or more in the first slot crosses the 2 MB boundary at vpn 512 (two
#: page-table pages); the last four slots sit in a 2 MB block of their own.
SLOT = 8
SLOT_BASES = (510, 518, 526, 534, 0x3000, 0x3008, 0x3010, 0x3018)
MAXPAGES = 4
MAXPROCS = 8
MAXSEGS = 3
FILES = {"libc.so": 12, "prog": 12}

# Kinds of mapping, as the model sees them.
ANON_K = "anon"  # private anonymous memory (or a MAP_INHERIT_ZERO copy of anything)
FILE_K = "file"  # private read-write file mapping (MAP_PRIVATE data)
TEXT_K = "text"  # private read-only file mapping (program text)
SHFILE_K = "shfile"  # shared read-only file mapping (MAP_SHARED, PROT_READ)
SHM_K = "shm"  # a SysV segment

#: What a process does right after a fork, if anything. The first choice is the one
#: Hypothesis draws most and shrinks to.
AFTER_FORK = ["child writes", "parent writes", "child reads", "parent reads", ""]
#: minherit(2) codes by name. The machine starts with a copy-on-write fork done, so
#: share comes first here.
INHERITS = {
    "share": MAP_INHERIT_SHARE,
    "copy": MAP_INHERIT_COPY,
    "none": MAP_INHERIT_NONE,
    "zero": MAP_INHERIT_ZERO,
}


@dataclass(frozen=True)
class Mmap:
    """One ``mmap`` and the accesses that follow it: ``touch[i]`` is what the process
    then does to page i: r read, w write, - nothing."""

    base: int
    npages: int
    kind: str
    fname: str = ""
    objoff: int = 0
    touch: str = ""


#: What a process maps when it starts a program, and which pages it touches before the
#: test takes over: text (crossing a 2 MB boundary), initialised data, bss, and a
#: shared read-only mapping of a library. Slots 3, 5, 6 and 7 stay free.
PROGRAM = [
    Mmap(SLOT_BASES[0], 3, TEXT_K, "prog", 0, "rrr"),
    Mmap(SLOT_BASES[1], 2, FILE_K, "prog", 3, "wr"),
    Mmap(SLOT_BASES[2], 3, ANON_K, "", 0, "ww-"),
    Mmap(SLOT_BASES[4], 2, SHFILE_K, "libc.so", 0, "rr"),
]

PICK = st.integers(0, 1 << 16)
#: User time between two accesses of a process that runs beside another.
THINK_NS = 2_000
SLOTS = st.integers(0, len(SLOT_BASES) - 1)
PAGE = st.integers(0, MAXPAGES - 1)

Job = tuple[str, "Vmspace | None", Callable[[Thread], KPath]]


# -- the reference model ------------------------------------------------------------------


@dataclass(eq=False)
class Cell:
    """One logical page that one or more processes read through. ``content`` is None
    until the page is first touched (anonymous memory is zero-filled on demand), a fresh
    int after each write, or a tuple naming an object page that nobody has copied:
    ``("vn", file, offset)`` or ``("shm", shmid, offset)``."""

    content: object


@dataclass(eq=False)
class Ref:
    """How a process maps one virtual page."""

    cell: Cell
    kind: str
    writable: bool
    mid: int  # which mmap it came from: munmap of "the whole mapping" takes these
    obj: UvmObject | None
    #: The anon layer is shared with another process (MAP_INHERIT_SHARE of a private
    #: mapping): the cell is one object for all of them.
    amap_shared: bool = False


@dataclass(eq=False)
class Proc:
    pid: int
    vm: Vmspace
    pages: dict[int, Ref] = field(default_factory=dict)
    shm: dict[int, int] = field(default_factory=dict)  # attach vpn -> shmid


@dataclass(eq=False)
class Seg:
    seg: ShmSegment
    cells: list[Cell]
    nattch: int = 0
    removed: bool = False


def _is_object_page(content: object) -> bool:
    return isinstance(content, tuple)


class VmMachine(RuleBasedStateMachine):
    """vm/ on one simulated 2-CPU machine, against the reference model above."""

    arch = "amd64"
    #: The live processes; exit consumes them.
    procs_b = Bundle("procs")

    def __init__(self) -> None:
        super().__init__()
        self.kit = VmKit(self.arch, 2, "exact")
        self.uvm = self.kit.uvm
        kit_hook = self.kit.engine.switch_hook
        assert kit_hook is not None
        self.kit.engine.switch_hook = self._switch_hook(kit_hook)
        self.procs: dict[int, Proc] = {}
        self.segs: dict[int, Seg] = {}
        self.next_pid = 1
        self.next_mid = 1
        self.next_content = 1
        #: content -> physical page number it lives on, learned from the pmaps.
        self.phys: dict[object, int] = {}
        #: Set while an operation or a check is under way; a failure leaves it set, and
        #: teardown then does not try to exit everyone on a broken simulation.
        self.broken = False

    # -- harness ------------------------------------------------------------------------

    def _switch_hook(self, kit_hook: Callable[[int, Thread | None], None]) -> Callable:
        uvm = self.uvm

        def hook(cpu: int, t: Thread | None) -> None:
            if t is not None:
                kit_hook(cpu, t)
                return
            # The CPU goes to its idle thread, on the kernel's address space.
            if not uvm.arch.broadcast_tlbi and uvm.machine.curpm[cpu] is not None:
                uvm.tlb.invalidate_all(cpu)  # a cr3 load drops the user translations
            uvm.machine.curpm[cpu] = None

        return hook

    def _run(self, jobs: list[Job]) -> list:
        """Run each job in a new thread bound to its vmspace, all at once, to the end."""
        results: dict[int, Any] = {}
        for i, (name, vm, fn) in enumerate(jobs):

            def body(me: Thread, i: int = i, fn: Callable[[Thread], KPath] = fn) -> KPath:
                results[i] = yield from fn(me)

            t = self.kit.spawn(name, body)
            if vm is not None:
                self.kit.vm_of[t.tid] = vm
        self.broken = True
        self.kit.run()
        unfinished = [jobs[i][0] for i in range(len(jobs)) if i not in results]
        assert not unfinished, f"threads never finished: {unfinished}"
        self.broken = False
        return [results[i] for i in range(len(jobs))]

    def _run1(self, name: str, vm: Vmspace | None, fn: Callable[[Thread], KPath]) -> Any:
        return self._run([(name, vm, fn)])[0]

    def _live(self) -> list[Proc]:
        return [self.procs[pid] for pid in sorted(self.procs)]

    def _free_slot(self, p: Proc, slot: int) -> int | None:
        for i in range(len(SLOT_BASES)):
            base = SLOT_BASES[(slot + i) % len(SLOT_BASES)]
            if all(v not in p.pages for v in range(base, base + SLOT)):
                return base
        return None

    def _fresh(self) -> int:
        self.next_content += 1
        return self.next_content

    def _target(self, p: Proc, slot: int, page: int) -> int:
        """A page to access, named by slot so that it does not depend on other steps:
        page ``page`` (modulo) of what the process has mapped in slot ``slot``, or the
        slot's first page if nothing is mapped there."""
        base = SLOT_BASES[slot]
        mine = [v for v in range(base, base + SLOT) if v in p.pages]
        return mine[page % len(mine)] if mine else base

    def _span(self, p: Proc, vpn: int, span: str) -> list[int]:
        """The pages a bulk access goes over: one page, the mapping it is in, or every
        page the process has mapped."""
        if span == "all":
            return sorted(p.pages) or [vpn]
        ref = p.pages.get(vpn)
        if span == "page" or ref is None:
            return [vpn]
        return sorted(v for v, r in p.pages.items() if r.mid == ref.mid)

    # -- the vm side of each operation, as kernel paths ----------------------------------

    def _mmap_path(self, vm: Vmspace, m: Mmap) -> Callable[[Thread], KPath]:
        """``mmap`` and then the accesses ``m.touch`` asks for, page by page:
        anonymous memory (``obj`` None: copy-on-write, needs-copy, no amap until the
        first fault), a private read-write or read-only file mapping, or a shared
        read-only one. ``uvn_attach`` hands back the vnode's object with a reference,
        which ``uvm_map`` gives to the entry (uvm_mmapfile)."""
        uvm = self.uvm
        prot = {ANON_K: PROT_RW, FILE_K: PROT_RW, TEXT_K: PROT_READ | PROT_EXEC}.get(
            m.kind, PROT_READ
        )
        maxprot = PROT_RW | PROT_EXEC if prot == PROT_RW else prot

        def path(me: Thread) -> KPath:
            vn = None if m.kind == ANON_K else uvn_attach(uvm, m.fname, FILES[m.fname])
            yield from uvm_map(
                uvm,
                me,
                vm.vm_map,
                m.base,
                m.npages,
                vn,
                m.objoff,
                prot,
                maxprot,
                copy_on_write=m.kind != SHFILE_K,
            )
            done = []
            for i, how in enumerate(m.touch):
                if how != "-":
                    ok = yield from uvm_touch(uvm, me, vm, m.base + i, 1, how == "w")
                    done.append(ok)
            return done

        return path

    def _program_path(self, vm: Vmspace, prog: list[Mmap]) -> Callable[[Thread], KPath]:
        paths = [self._mmap_path(vm, m) for m in prog]

        def path(me: Thread) -> KPath:
            done = []
            for fn in paths:
                done += yield from fn(me)
            return done

        return path

    def _access_path(
        self, vm: Vmspace, vpns: list[int], write: bool, touch: bool, think_ns: int = 0
    ) -> Callable[[Thread], KPath]:
        """Fault on each page (uvm_fault) or access it as user code does (uvm_touch),
        with ``think_ns`` of user time before each access. A user access goes through
        the TLB first: a translation cached there must still be the pmap's, or the
        process would read a page it no longer maps (design.md 1)."""
        uvm = self.uvm
        fn = uvm_touch if touch else uvm_fault
        tlb = uvm.tlb

        def path(me: Thread) -> KPath:
            done = []
            for vpn in vpns:
                if think_ns:
                    yield Run(think_ns, USER)
                if touch:
                    cached = tlb.lookup(uvm.cpu_of(me), user_tag(uvm, vm.pmap.tag), vpn)
                    hit = vm.pmap.lookup(vpn)
                    assert cached is None or (hit is not None and hit[1].page.ppn == cached), (
                        f"{vm}: cpu{me.cpu}'s TLB translates vpn {vpn:#x} to page {cached}, "
                        f"the pmap to {hit[1].page if hit else 'nothing'}"
                    )
                ok = yield from fn(uvm, me, vm, vpn, 1, write)
                done.append(ok)
            return done

        return path

    def _exit_path(self, vm: Vmspace) -> Callable[[Thread], KPath]:
        """exit1 of a single-threaded process in the committed order: ``uvm_purge``
        (with ``pmap_purge`` on arm64), ``pmap_deactivate``, then ``uvmspace_free`` drops
        the last reference (openbsd-exit-path.md 4.1, 4.6, 5.3)."""
        uvm = self.uvm

        def path(me: Thread) -> KPath:
            yield from uvm_purge(uvm, me, vm, True)
            assert not vm.vm_map.entries, f"uvm_purge left entries in {vm}"
            self.kit.leave(me, vm.pmap)
            yield from uvmspace_free(uvm, me, vm)

        return path

    # -- the model's side of each operation ------------------------------------------------

    def _model_mmap(self, p: Proc, m: Mmap) -> list[bool]:
        self.next_mid += 1
        obj = None if m.kind == ANON_K else self.uvm.vnodes[m.fname]
        for i in range(m.npages):
            content = None if m.kind == ANON_K else ("vn", m.fname, m.objoff + i)
            writable = m.kind in (ANON_K, FILE_K)
            p.pages[m.base + i] = Ref(Cell(content), m.kind, writable, self.next_mid, obj)
        return [
            self._model_access(p, m.base + i, how == "w")
            for i, how in enumerate(m.touch)
            if how != "-"
        ]

    def _model_access(self, p: Proc, vpn: int, write: bool) -> bool:
        """A user access: whether it is allowed, and what it does to the cell."""
        ref = p.pages.get(vpn)
        if ref is None or (write and not ref.writable):
            return False
        cell = ref.cell
        if write and ref.kind != SHM_K:
            cell.content = self._fresh()
        elif cell.content is None:
            cell.content = self._fresh()  # zero fill
        return True

    def _model_shm_detach(self, p: Proc, vpn: int) -> None:
        shmid = p.shm.pop(vpn)
        seg = self.segs[shmid]
        for v in range(vpn, vpn + len(seg.cells)):
            del p.pages[v]
        seg.nattch -= 1
        if seg.nattch == 0 and seg.removed:
            del self.segs[shmid]

    def _model_exec(self, p: Proc) -> None:
        for vpn in sorted(p.shm):
            self._model_shm_detach(p, vpn)
        p.pages.clear()

    def _model_exit(self, p: Proc) -> None:
        self._model_exec(p)
        del self.procs[p.pid]

    def _check_exited(self, vm: Vmspace) -> None:
        assert not vm.vm_map.entries, f"{vm}: entries left after exit"
        assert vm.vm_shm is None, f"{vm}: shm attachments left after exit"
        assert vm.freed and vm.vm_map.pmap is None, f"{vm} was not freed by uvmspace_free"

    def _expect(self, p: Proc, what: str, got: list[bool], want: list[bool]) -> None:
        assert got == want, f"p{p.pid} {what}: vm says {got}, the model {want}"

    # -- process life ----------------------------------------------------------------------

    @initialize(target=procs_b)
    def first_processes(self) -> Any:
        """A process running the program and a child it forked with the default
        inheritance (copy-on-write everywhere), as a shell and a command before exec."""
        p = self._spawn()
        return multiple(p, self._fork(p, ["copy"] * len(SLOT_BASES), ""))

    @precondition(lambda self: len(self.procs) < MAXPROCS)
    @rule(target=procs_b)
    def new_process(self) -> Proc:
        """A new process running the program (fork, then exec, of something else)."""
        return self._spawn()

    def _spawn(self) -> Proc:
        uvm = self.uvm
        pid = self.next_pid
        self.next_pid += 1
        made: list[Vmspace] = []

        def path(me: Thread) -> KPath:
            vm = yield from uvmspace_alloc(uvm, me, f"p{pid}")
            self.kit.vm_of[me.tid] = vm
            pmap_activate(uvm, me, vm.pmap)
            made.append(vm)
            return (yield from self._program_path(vm, PROGRAM)(me))

        got = self._run1(f"p{pid}.spawn", None, path)
        p = self.procs[pid] = Proc(pid, made[0])
        self._expect(p, "program load", got, [x for m in PROGRAM for x in self._model_mmap(p, m)])
        return p

    @precondition(lambda self: len(self.procs) < MAXPROCS)
    @rule(
        target=procs_b,
        parent=procs_b,
        inherit=st.lists(
            st.sampled_from(list(INHERITS)), min_size=len(SLOT_BASES), max_size=len(SLOT_BASES)
        ),
        then=st.sampled_from(AFTER_FORK),
    )
    def fork(self, parent: Proc, inherit: list[str], then: str) -> Proc:
        """``uvmspace_fork`` with the inheritance of each parent entry set beforehand,
        as ``minherit`` would (uvm_map_inherit): the entries in slot i get inherit[i].
        SysV segments keep MAP_INHERIT_SHARE, as ``shmat`` made them. Then (``then``)
        the child or the parent may go over all its pages at once, as a process that
        just forked usually does.

        One combination is left out (it becomes MAP_INHERIT_SHARE): MAP_INHERIT_COPY of
        an entry whose anon layer is already shared with another process by
        MAP_INHERIT_SHARE. OpenBSD's ``uvm_mapent_forkcopy`` copies the amap for the
        child, then write-protects the forking parent and marks it needs-copy: the
        parent's next fault gives it an amap of its own, which ends its sharing, while
        the other sharer's writable translations keep writing into pages the child's
        copy holds. Neither is what the model's sharing and copying say. (That vm/
        protects the parent as OpenBSD does is held by
        test_fork_copy_of_a_shared_amap_write_protects_the_parent.)"""
        return self._fork(parent, inherit, then)

    def _fork(self, parent: Proc, inherit: list[str], then: str) -> Proc:
        uvm = self.uvm
        plan = []
        for e in parent.vm.vm_map.entries.values():
            ref = parent.pages[e.start]
            inh = INHERITS[inherit[_slot_of(e.start)]]
            if ref.kind == SHM_K or (inh == MAP_INHERIT_COPY and ref.amap_shared):
                inh = MAP_INHERIT_SHARE
            e.inheritance = inh
            plan.append((e.start, e.end, inh))
        pid = self.next_pid
        self.next_pid += 1

        def path(me: Thread) -> KPath:
            vm2 = yield from uvmspace_fork(uvm, me, parent.vm, f"p{pid}")
            pmap_activate(uvm, me, vm2.pmap, on_cpu=False)  # cpu_fork: the child's thread
            return vm2

        vm2 = self._run1(f"p{parent.pid}.fork", parent.vm, path)
        child = Proc(pid, vm2, shm=dict(parent.shm))
        for start, end, inh in plan:
            for v in range(start, end):
                r = parent.pages[v]
                if inh == MAP_INHERIT_NONE:
                    continue
                if inh == MAP_INHERIT_SHARE:
                    r.amap_shared = True
                    c = Ref(r.cell, r.kind, r.writable, r.mid, r.obj, r.amap_shared)
                elif inh == MAP_INHERIT_COPY:
                    c = Ref(Cell(r.cell.content), r.kind, r.writable, r.mid, r.obj)
                else:
                    c = Ref(Cell(None), ANON_K, r.writable, r.mid, None)
                child.pages[v] = c
        for shmid in child.shm.values():
            self.segs[shmid].nattch += 1
        self.procs[pid] = child
        if then:
            who, how = then.split()
            self._touch_all(child if who == "child" else parent, how == "writes")
        return child

    def _touch_all(self, p: Proc, write: bool) -> None:
        vpns = sorted(p.pages)
        got = self._run1(f"p{p.pid}.touch", p.vm, self._access_path(p.vm, vpns, write, True))
        want = [self._model_access(p, v, write) for v in vpns]
        self._expect(p, f"touch all w={write}", got, want)

    @rule(p=procs_b)
    def exec(self, p: Proc) -> None:
        """``uvmspace_exec`` of a vmspace nobody else holds: emptied in place (SysV
        segments detached first), then the new program is mapped and started."""
        uvm = self.uvm
        load = self._program_path(p.vm, PROGRAM)

        def path(me: Thread) -> KPath:
            nvm = yield from uvmspace_exec(uvm, me, p.vm)
            assert nvm is p.vm, "uvmspace_exec replaced a vmspace that had one reference"
            return (yield from load(me))

        got = self._run1(f"p{p.pid}.exec", p.vm, path)
        self._model_exec(p)
        self._expect(p, "exec", got, [x for m in PROGRAM for x in self._model_mmap(p, m)])

    @rule(p=consumes(procs_b))
    def exit(self, p: Proc) -> None:
        """The process exits; its map must be empty and its vmspace freed after."""
        self._run1(f"p{p.pid}.exit", p.vm, self._exit_path(p.vm))
        self._check_exited(p.vm)
        self._model_exit(p)

    # -- mappings --------------------------------------------------------------------------

    @rule(
        p=procs_b,
        slot=SLOTS,
        kind=st.sampled_from([ANON_K, FILE_K, TEXT_K, SHFILE_K]),
        npages=st.integers(1, MAXPAGES),
        fname=st.sampled_from(sorted(FILES)),
        objoff=st.integers(0, 8),
        touch=st.text("-rw", min_size=0, max_size=MAXPAGES),
    )
    def mmap(
        self, p: Proc, slot: int, kind: str, npages: int, fname: str, objoff: int, touch: str
    ) -> None:
        """``mmap`` at a free address, then user accesses to its first pages
        (``touch``: r read, w write, - skip)."""
        base = self._free_slot(p, slot)
        if base is None:
            return
        m = Mmap(base, npages, kind, fname, objoff, touch[:npages])
        got = self._run1(f"p{p.pid}.mmap", p.vm, self._mmap_path(p.vm, m))
        self._expect(p, f"mmap {m}", got, self._model_mmap(p, m))

    @rule(p=procs_b, slot=SLOTS, page=PAGE, length=st.integers(0, MAXPAGES))
    def munmap(self, p: Proc, slot: int, page: int, length: int) -> None:
        """``munmap`` of the whole mapping in a slot (``length`` 0) or of ``length``
        pages from one of its pages: the edge entries are clipped (uvm_unmap_remove).
        SysV segments are left to shmdt."""
        uvm = self.uvm
        vpn = self._target(p, slot, page)
        ref = p.pages.get(vpn)
        if ref is None or ref.kind == SHM_K:
            return
        if length == 0:
            mine = [v for v, r in p.pages.items() if r.mid == ref.mid]
            start, end = min(mine), max(mine) + 1
        else:
            start, end = vpn, vpn + length

        def path(me: Thread) -> KPath:
            yield from uvm_unmap(uvm, me, p.vm.vm_map, start, end)

        self._run1(f"p{p.pid}.munmap", p.vm, path)
        for v in range(start, end):
            p.pages.pop(v, None)

    # -- accesses --------------------------------------------------------------------------

    @rule(p=procs_b, slot=SLOTS, page=PAGE, write=st.booleans())
    def fault(self, p: Proc, slot: int, page: int, write: bool) -> None:
        """A read or write fault on one page (uvm_fault): map what is there, zero-fill,
        page in, copy on write, promote a file page, or refuse (SIGSEGV)."""
        vpn = self._target(p, slot, page)
        got = self._run1(f"p{p.pid}.fault", p.vm, self._access_path(p.vm, [vpn], write, False))
        self._expect(p, f"fault {vpn:#x} w={write}", got, [self._model_access(p, vpn, write)])

    @rule(
        p=procs_b,
        slot=SLOTS,
        page=PAGE,
        write=st.booleans(),
        span=st.sampled_from(["all", "mapping", "page"]),
    )
    def touch(self, p: Proc, slot: int, page: int, write: bool, span: str) -> None:
        """User code reads or writes one page, one mapping, or everything it has mapped
        (uvm_touch): the pmap serves what it allows, the rest faults."""
        vpns = self._span(p, self._target(p, slot, page), span)
        got = self._run1(f"p{p.pid}.touch", p.vm, self._access_path(p.vm, vpns, write, True))
        want = [self._model_access(p, v, write) for v in vpns]
        self._expect(p, f"touch {_runs(vpns)} w={write}", got, want)

    @precondition(lambda self: len(self.procs) >= 2)
    @rule(
        target=procs_b,
        a=consumes(procs_b),
        b=consumes(procs_b),
        ops=st.tuples(*[st.sampled_from(["read", "write", "exit"])] * 2),
    )
    def two_at_once(self, a: Proc, b: Proc, ops: tuple[str, str]) -> Any:
        """Two processes at the same time, one per CPU, each exiting or going twice
        over all its pages, reading or writing, with some user time between accesses:
        what one does to a page both map (a copy-on-write break in a shared amap
        removes the other's translation) must reach the other's CPU (amd64 shootdown,
        arm64 broadcast TLBI). Accesses and exits of different processes commute in the
        model, whatever the interleaving. The survivors go back to the bundle."""
        ps = [a, b]
        jobs: list[Job] = []
        for p, op in zip(ps, ops, strict=True):
            if op == "exit":
                jobs.append((f"p{p.pid}.exit", p.vm, self._exit_path(p.vm)))
            else:
                vpns = sorted(p.pages) * 2
                body = self._access_path(p.vm, vpns, op == "write", True, THINK_NS)
                jobs.append((f"p{p.pid}.{op}", p.vm, body))
        results = self._run(jobs)
        for p, op, got in zip(ps, ops, results, strict=True):
            if op == "exit":
                self._check_exited(p.vm)
                self._model_exit(p)
            else:
                vpns = sorted(p.pages) * 2
                want = [self._model_access(p, v, op == "write") for v in vpns]
                self._expect(p, op, got, want)
        return multiple(*[p for p, op in zip(ps, ops, strict=True) if op != "exit"])

    # -- SysV shared memory ----------------------------------------------------------------

    @rule(
        op=st.sampled_from(["shmget", "shmat", "shmdt", "rmid"]),
        p=procs_b,
        which=PICK,
        slot=SLOTS,
        npages=st.integers(1, 3),
    )
    def sysv_shm(self, op: str, p: Proc, which: int, slot: int, npages: int) -> None:
        """``shmget``, ``shmat`` (a shared, MAP_INHERIT_SHARE entry on the segment's
        object), ``shmdt`` and ``shmctl(IPC_RMID)`` (the segment goes once nobody is
        attached) of sysv_shm.c; an operation with nothing to act on is skipped."""
        open_segs = [s for _, s in sorted(self.segs.items()) if not s.removed]
        if op == "shmget" and len(self.segs) < MAXSEGS:
            seg = shmget(self.uvm, npages)
            cells = [Cell(("shm", seg.shmid, i)) for i in range(npages)]
            self.segs[seg.shmid] = Seg(seg, cells)
        elif op == "shmat" and open_segs:
            self._shmat(p, open_segs[which % len(open_segs)], slot)
        elif op == "shmdt" and SLOT_BASES[slot] in p.shm:
            self._shmdt(p, SLOT_BASES[slot])
        elif op == "rmid" and open_segs:
            self._rmid(open_segs[which % len(open_segs)])

    def _shmat(self, p: Proc, s: Seg, slot: int) -> None:
        uvm = self.uvm
        base = self._free_slot(p, slot)
        if base is None:
            return

        def path(me: Thread) -> KPath:
            yield from shmat(uvm, me, p.vm, s.seg, base)

        self._run1(f"p{p.pid}.shmat", p.vm, path)
        s.nattch += 1
        p.shm[base] = s.seg.shmid
        self.next_mid += 1
        for i, cell in enumerate(s.cells):
            ref = Ref(cell, SHM_K, True, self.next_mid, s.seg.aobj, amap_shared=True)
            p.pages[base + i] = ref

    def _shmdt(self, p: Proc, vpn: int) -> None:
        uvm = self.uvm

        def path(me: Thread) -> KPath:
            return (yield from shmdt(uvm, me, p.vm, vpn))

        assert self._run1(f"p{p.pid}.shmdt", p.vm, path), f"shmdt found nothing at {vpn:#x}"
        self._model_shm_detach(p, vpn)

    def _rmid(self, s: Seg) -> None:
        uvm = self.uvm

        def path(me: Thread) -> KPath:
            yield from shmctl_rmid(uvm, me, s.seg)

        self._run1("shmctl", None, path)
        s.removed = True
        if s.nattch == 0:
            del self.segs[s.seg.shmid]

    # -- checks after every step -----------------------------------------------------------

    @invariant()
    def pmaps_match_reference_model(self) -> None:
        """Every translation maps the page the model predicts: one page per content,
        one content per page, and write access only to a page no other cell can see
        (copy-on-write, uvm_fault; sharing, amap_add and uvm_fault_lower)."""
        self.broken = True
        cells: dict[object, list[Cell]] = {}
        for p in self._live():
            for r in p.pages.values():
                _add_cell(cells, r.cell)
        for s in self.segs.values():
            for c in s.cells:
                _add_cell(cells, c)
        # Contents nobody holds any more free their page for another (a write in place).
        for c in list(self.phys):
            if c not in cells and not (isinstance(c, tuple) and c[0] == "vn"):
                del self.phys[c]
        owner = {ppn: c for c, ppn in self.phys.items()}
        for p in self._live():
            for vpn, pte in p.vm.pmap.ptes.items():
                where = f"p{p.pid} vpn {vpn:#x}"
                ref = p.pages.get(vpn)
                assert ref is not None, f"{where}: mapped in the pmap, not in the process"
                c = ref.cell.content
                assert c is not None, f"{where}: mapped in the pmap, never touched"
                pg = pte.page
                assert not pg.freed, f"{where}: the pmap maps freed {pg}"
                want = self.phys.get(c)
                if want is None:
                    other = owner.get(pg.ppn)
                    assert other is None, (
                        f"{where} maps page {pg.ppn} for content {c!r}, but that page holds "
                        f"content {other!r} that another mapping still sees"
                    )
                    self.phys[c] = pg.ppn
                    owner[pg.ppn] = c
                else:
                    assert want == pg.ppn, (
                        f"{where} maps page {pg.ppn}; content {c!r} is on page {want}"
                    )
                if pte.writable:
                    assert ref.writable, f"{where}: writable translation of a read-only page"
                    assert not _is_object_page(c) or ref.kind == SHM_K, (
                        f"{where}: writable translation of file page {c!r}"
                    )
                    others = [x for x in cells[c] if x is not ref.cell]
                    assert not others, (
                        f"{where}: writable translation of page {pg.ppn}, which "
                        f"{len(others)} other copy-on-write cell(s) still read"
                    )
        self.broken = False

    @invariant()
    def maps_match_reference_model(self) -> None:
        """The entries of each live map cover exactly the pages the process mapped, with
        the model's protection and backing object; SysV bookkeeping agrees."""
        self.broken = True
        for p in self._live():
            covered = {}
            for e in p.vm.vm_map.entries.values():
                for v in range(e.start, e.end):
                    covered[v] = e
            assert sorted(covered) == sorted(p.pages), (
                f"p{p.pid}: map covers {_runs(covered)}, the model {_runs(p.pages)}"
            )
            for v, r in sorted(p.pages.items()):
                e = covered[v]
                assert bool(e.protection & PROT_WRITE) == r.writable, f"p{p.pid} {v:#x}: prot"
                assert e.object is r.obj, f"p{p.pid} {v:#x}: object {e.object} not {r.obj}"
            shm_state = sorted(p.vm.vm_shm.state) if p.vm.vm_shm is not None else []
            assert shm_state == sorted(p.shm.items()), f"p{p.pid}: shm table {shm_state}"
        assert sorted(self.uvm.shm_segments) == sorted(self.segs)
        for shmid, s in self.segs.items():
            seg = self.uvm.shm_segments[shmid]
            assert seg.shm_nattch == s.nattch, f"shm {shmid}: nattch {seg.shm_nattch}"
            assert seg.removed == s.removed
        self.broken = False

    @invariant()
    def reference_counts_are_exact(self) -> None:
        """design.md 5 and openbsd-exit-path.md V4: every count equals the holders that
        are left, so none is negative and none leaks. ``am_ref`` counts map entries,
        ``an_ref`` amap slots, ``uo_refs`` entries plus a live segment's own reference;
        an amap holds anons only in slots some entry still references (am_ppref)."""
        self.broken = True
        amaps: dict[Any, list] = {}
        objs: dict[Any, int] = {}
        for p in self._live():
            vm = p.vm
            assert vm.vm_refcnt == 1, f"{vm}: vm_refcnt {vm.vm_refcnt}"
            assert vm.pmap.pm_refs == 1, f"{vm.pmap}: pm_refs {vm.pmap.pm_refs}"
            assert vm.pmap.pm_active == 1, f"{vm.pmap}: pm_active {vm.pmap.pm_active}"
            for e in vm.vm_map.entries.values():
                if e.amap is not None:
                    amaps.setdefault(e.amap, []).append(e)
                if e.object is not None:
                    objs[e.object] = objs.get(e.object, 0) + 1
        for seg in self.uvm.shm_segments.values():
            objs[seg.aobj] = objs.get(seg.aobj, 0) + 1
        anons: dict[Any, int] = {}
        for amap, entries in amaps.items():
            assert not amap.freed, f"{amap} is freed but still referenced"
            assert amap.am_ref == len(entries), f"{amap}: am_ref, {len(entries)} entries"
            for s, anon in amap.anons.items():
                assert any(e.aref_pageoff <= s < e.aref_pageoff + e.npages for e in entries), (
                    f"{amap} holds {anon} in slot {s}, which no entry references"
                )
                anons[anon] = anons.get(anon, 0) + 1
        for anon, n in anons.items():
            assert anon.an_ref == n, f"{anon}: an_ref, {n} amap slots hold it"
            assert not anon.freed and anon.an_page is not None and not anon.an_page.freed
        for obj, n in objs.items():
            assert obj.uo_refs == n, f"{obj}: uo_refs, {n} holders"
            assert not obj.freed, f"{obj} freed while referenced"
        for name, vn in sorted(self.uvm.vnodes.items()):
            assert vn.uo_refs == objs.get(vn, 0), f"vnode {name}: uo_refs {vn.uo_refs}"
        self.broken = False

    @invariant()
    def pages_are_accounted_for(self) -> None:
        """design.md 2: the pages in use are those the live address spaces, the vnode
        cache and the SysV segments hold (audit_pages)."""
        self.broken = True
        audit_pages(self.uvm, [p.vm for p in self._live()])
        self.broken = False

    @invariant()
    def resident_counts_match_pmaps(self) -> None:
        """A pmap's resident count is the number of pages of its mappings it maps, and it
        maps nothing outside them."""
        self.broken = True
        for p in self._live():
            pm = p.vm.pmap
            inside = sum(
                1
                for e in p.vm.vm_map.entries.values()
                for v in range(e.start, e.end)
                if pm.lookup(v) is not None
            )
            assert pm.resident_count == inside == len(pm.ptes), (
                f"{pm}: resident_count {pm.resident_count}, {inside} pages of its "
                f"mappings mapped, {len(pm.ptes)} PTEs"
            )
            assert pm.wired_count == 0
        self.broken = False

    @invariant()
    def tlbs_hold_no_stale_translation(self) -> None:
        """A TLB entry of a live address space translates as its pmap does: every
        removal or replacement was invalidated wherever it could be cached (design.md 1;
        openbsd-exit-path.md T1, T4)."""
        self.broken = True
        live = {p.vm.pmap.tag: p for p in self._live()}
        tlb = self.uvm.tlb
        for cpu, spaces in enumerate(tlb.entries):  # type: ignore[union-attr]
            for asid, space in sorted(spaces.items()):
                p = live.get(asid & ~1)
                if p is None:
                    continue  # a dead address space's tag is never loaded again
                for vpn, ppn in sorted(space.items()):
                    hit = p.vm.pmap.lookup(vpn)
                    assert hit is not None and hit[1].page.ppn == ppn, (
                        f"cpu{cpu} TLB translates p{p.pid} vpn {vpn:#x} to page {ppn}; "
                        f"the pmap maps {hit[1].page if hit else 'nothing'}"
                    )
        self.broken = False

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Everyone exits and every segment is removed: nothing is left (design.md 2)."""
        if self.broken:
            return  # a step failed; its error is the report
        for p in self._live():
            self._run1(f"p{p.pid}.exit", p.vm, self._exit_path(p.vm))
            self._check_exited(p.vm)
            self._model_exit(p)
        for _, s in sorted(self.segs.items()):
            if not s.removed:
                self._rmid(s)
        assert not self.segs and not self.uvm.shm_segments
        audit_all_exited(self.uvm)
        assert self.uvm.physmem.in_use[ANON] == 0


def _slot_of(vpn: int) -> int:
    return next(i for i, base in enumerate(SLOT_BASES) if base <= vpn < base + SLOT)


def _add_cell(cells: dict[object, list[Cell]], cell: Cell) -> None:
    if cell.content is None:
        return
    held = cells.setdefault(cell.content, [])
    if all(x is not cell for x in held):
        held.append(cell)


def _runs(pages: Any) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(pages):
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0], v + 1)
        else:
            out.append((v, v + 1))
    return out


class VmMachineArm64(VmMachine):
    arch = "arm64"


STATEFUL = settings(max_examples=60, stateful_step_count=30, derandomize=True, deadline=None)

TestVmAgainstReferenceModelAmd64 = VmMachine.TestCase
TestVmAgainstReferenceModelAmd64.settings = STATEFUL
TestVmAgainstReferenceModelArm64 = VmMachineArm64.TestCase
TestVmAgainstReferenceModelArm64.settings = STATEFUL


# -- what the model found in vm/, reduced to plain cases

VA = 0x100  # any user page


def _run_in(kit: VmKit, vm: Vmspace | None, fn: Callable[[Thread], KPath]) -> Any:
    """Run ``fn`` to its end in a new thread bound to ``vm``."""
    out: list[Any] = []

    def body(me: Thread) -> KPath:
        out.append((yield from fn(me)))

    t = kit.spawn("t", body)
    if vm is not None:
        kit.vm_of[t.tid] = vm
    kit.run()
    return out[0]


def _process(kit: VmKit, name: str) -> Vmspace:
    uvm = kit.uvm

    def fn(me: Thread) -> KPath:
        vm = yield from uvmspace_alloc(uvm, me, name)
        pmap_activate(uvm, me, vm.pmap)
        return vm

    return _run_in(kit, None, fn)


def _forked(kit: VmKit, vm: Vmspace, name: str) -> Vmspace:
    uvm = kit.uvm

    def fn(me: Thread) -> KPath:
        vm2 = yield from uvmspace_fork(uvm, me, vm, name)
        pmap_activate(uvm, me, vm2.pmap, on_cpu=False)
        return vm2

    return _run_in(kit, vm, fn)


def _write(kit: VmKit, vm: Vmspace, vpn: int, touch: bool = False) -> None:
    fn = uvm_touch if touch else uvm_fault
    assert _run_in(kit, vm, lambda me: fn(kit.uvm, me, vm, vpn, 1, True))


def _read(kit: VmKit, vm: Vmspace, vpn: int) -> None:
    assert _run_in(kit, vm, lambda me: uvm_fault(kit.uvm, me, vm, vpn, 1, False))


def _mapped(vm: Vmspace, vpn: int) -> Any:
    hit = vm.pmap.lookup(vpn)
    return hit[1].page if hit is not None else None


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_cow_break_in_a_shared_amap_unmaps_the_old_page_from_every_sharer(arch: str) -> None:
    """A write that breaks copy-on-write in an amap shared by MAP_INHERIT_SHARE puts a
    new anon in the shared slot, and every process sharing the amap must see it:
    OpenBSD's ``amap_add`` (uvm_amap.c), replacing an anon of an AMAP_SHARED amap, takes
    the old page out of every pmap with ``pmap_page_protect(PROT_NONE)``, so the other
    sharers fault and find the new anon (openbsd-exit-path.md 10.2).

    P writes a page, forks C1 (copy: P keeps a read-only translation, the anon is
    shared with C1), then forks C2 sharing the range (P gets a copy of the amap, shared
    with C2). C2 writes the page. P must not keep reading the old page, which is C1's."""
    kit = VmKit(arch, 2, "exact")
    uvm = kit.uvm
    p = _process(kit, "P")
    _run_in(kit, p, lambda me: uvm_map(uvm, me, p.vm_map, VA, 1))
    _write(kit, p, VA)
    c1 = _forked(kit, p, "C1")
    p.vm_map.lookup(VA).inheritance = MAP_INHERIT_SHARE  # type: ignore[union-attr]
    c2 = _forked(kit, p, "C2")
    _write(kit, c2, VA)
    _read(kit, c1, VA)
    old, new = _mapped(c1, VA), _mapped(c2, VA)
    assert old is not new
    assert _mapped(p, VA) in (None, new), (
        f"P still translates to {old}, C1's copy, after C2 wrote {new} into the amap they share"
    )


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_promotion_into_a_shared_amap_unmaps_the_file_page_from_every_sharer(arch: str) -> None:
    """A write to a private file mapping copies the file's page into a new anon of the
    entry's amap; when that amap is shared (MAP_INHERIT_SHARE), OpenBSD's
    ``uvm_fault_lower`` first takes the file page out of every pmap with
    ``pmap_page_protect(uobjpage, PROT_NONE)`` ("promote to shared amap? make sure all
    sharing procs see it"), so the other sharers fault and find the anon.

    P maps a file privately with MAP_INHERIT_SHARE and reads its page; P forks C, which
    shares the amap; C writes the page. P must not keep reading the file's page."""
    kit = VmKit(arch, 2, "exact")
    uvm = kit.uvm
    p = _process(kit, "P")

    def mmap(me: Thread) -> KPath:
        vn = uvn_attach(uvm, "data", 4)
        return (yield from uvm_map(uvm, me, p.vm_map, VA, 1, vn, inherit=MAP_INHERIT_SHARE))

    _run_in(kit, p, mmap)
    _read(kit, p, VA)
    filepage = _mapped(p, VA)
    c = _forked(kit, p, "C")
    _write(kit, c, VA)
    new = _mapped(c, VA)
    assert new is not filepage
    assert _mapped(p, VA) in (None, new), (
        f"P still translates to the file's {filepage} after C wrote {new} into the amap they share"
    )


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_fork_copy_of_a_shared_amap_write_protects_the_parent(arch: str) -> None:
    """MAP_INHERIT_COPY of an entry whose amap is AMAP_SHARED: OpenBSD's
    ``uvm_mapent_forkcopy`` gives the child its own copy of the amap at once
    (``amap_copy``) and then, as for any entry with an amap that is not needs-copy,
    write-protects the parent's range (``pmap_protect``) and marks it needs-copy, so
    the parent's next write breaks copy-on-write instead of changing the child's page.

    P writes a page and forks Q sharing it; Q sets the range back to copy (minherit)
    and forks R; Q writes the page through the translation it had. R must not see it.
    (P, the other sharer, keeps a writable translation in OpenBSD too: the state
    machine stays away from this case for that reason.)"""
    kit = VmKit(arch, 2, "exact")
    uvm = kit.uvm
    p = _process(kit, "P")
    _run_in(kit, p, lambda me: uvm_map(uvm, me, p.vm_map, VA, 1, inherit=MAP_INHERIT_SHARE))
    _write(kit, p, VA)
    q = _forked(kit, p, "Q")
    _write(kit, q, VA)  # Q maps the shared page, writable
    q.vm_map.lookup(VA).inheritance = MAP_INHERIT_COPY  # type: ignore[union-attr]
    r = _forked(kit, q, "R")
    _read(kit, r, VA)
    _write(kit, q, VA, touch=True)
    assert _mapped(q, VA) is not _mapped(r, VA), (
        f"Q wrote {_mapped(q, VA)} through the writable translation it kept across the "
        f"fork, and R reads that same page"
    )
