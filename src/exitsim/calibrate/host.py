"""Microbenchmarks of this Linux host: fork, exit, exec, page faults and the teardown
of an exiting address space, timed from user space (``time.perf_counter_ns``, which is
CLOCK_MONOTONIC here, so stamps from two processes compare) and with the rusage
``os.wait4`` returns for the child.

This file uses the standard library only and runs as a script in an interpreter of
its own (``python -I -S host.py``): the parent that forks is then a bare interpreter,
the same few megabytes every time, not the process that imported the simulator. Its
layout (mappings, resident pages) is reported, because Linux's fork copies the
parent's page-table entries and the model has to be given the same parent.

Every benchmark runs once per repeat, all of them in each repeat, so that a change in
the machine's load falls on all of them alike; sizes are taken in an order that turns
with the repeat. The first repeat warms caches and the hypervisor's backing of guest
memory and is thrown away. Memory a benchmark needs is mapped in the child (or in the
parent only for the fork-related ones, and unmapped after), private and anonymous,
with ``MADV_NOHUGEPAGE`` so that it is 4 KiB pages, and touched with ``memset`` or
``memmove`` through ctypes so that page faults and memory traffic dominate, not
Python's loop.

Benchmarks (``samples`` keys: ``samples[benchmark][variant][field]`` is the list of
that field's values, one per repeat, in repeat order; times in ns):

- ``fork_exit`` by ``parent_mib``: fork, the child stamps the clock and ``_exit(0)``s
  at once, the parent times fork to ``wait4``'s return (``latency_ns``), split at the
  child's stamp (``fork_ns``, ``exit_ns``); the parent holds ``parent_mib`` MiB more
  anonymous memory, written (Linux copies its page-table entries at fork and the
  child's exit drops them).
- ``touch_exit`` by ``mib``: the child maps ``mib`` MiB, writes it (``fault_ns``:
  page faults, zeroing and the write), writes it again (``write_ns``: the write
  alone), stamps the clock and exits; ``exit_ns`` is that stamp to the parent's
  ``wait4`` return.
- ``copy``: the child maps two buffers of the largest size and times ``memset`` of one
  (``zero_ns``) and ``memmove`` from one to the other (``copy_ns``), both mapped
  already: the memory traffic of zeroing and of copying pages.
- ``exec``: fork, the child ``execv`` of ``/bin/true``, the parent times fork to
  ``wait4``'s return.
- ``cow`` by ``mib``: the parent writes ``mib`` MiB, forks; the child stamps when it
  starts (``fork_ns`` from the parent's stamp before fork), writes every page
  (``fault_ns``: copy-on-write faults), writes again (``write_ns``), stamps and exits
  (``exit_ns``).
- ``file`` by ``mib``: the child maps ``mib`` MiB of a file in the page cache, private
  and read-only as program text is, and reads it through (``fault_ns``), and again
  (``read_ns``: the copy alone).
- ``concurrent`` by ``children``: that many children each write the largest size,
  wait at a pipe until all are ready, stamp and exit at once; ``exit_ns`` of each is
  its stamp to the parent's ``wait4`` return for it.

Output: one JSON document on standard output; progress on standard error.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import mmap
import os
import platform
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

FORMAT = 1
PAGE = mmap.PAGESIZE
MIB = 1 << 20
#: The program ``exec`` runs: small, and on every Linux.
TRUE = "/bin/true"
#: Read a file mapping through a buffer of this size (in cache, touched first).
READ_CHUNK = MIB
#: 64-bit slots in the stamp page: the most children the concurrent benchmark stamps.
SLOTS = PAGE // 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value
_PRIVATE_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

now = time.perf_counter_ns
Sample = dict[str, int]


class HostError(RuntimeError):
    """A benchmark could not run here: one line."""


# -- memory ---------------------------------------------------------------------------


def map_anon(n: int) -> int:
    """``n`` bytes of private anonymous memory in 4 KiB pages, not yet touched."""
    addr = _libc.mmap(None, n, mmap.PROT_READ | mmap.PROT_WRITE, _PRIVATE_ANON, -1, 0)
    if addr in (None, MAP_FAILED):
        raise HostError(f"mmap of {n >> 20} MiB failed: {os.strerror(ctypes.get_errno())}")
    # No transparent huge pages: the teardown and the faults are to be of 4 KiB pages.
    _libc.madvise(addr, n, mmap.MADV_NOHUGEPAGE)
    return int(addr)


def map_file(fd: int, n: int) -> int:
    """The first ``n`` bytes of file ``fd``, private and read-only (as program text)."""
    addr = _libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    if addr in (None, MAP_FAILED):
        raise HostError(f"mmap of a file failed: {os.strerror(ctypes.get_errno())}")
    return int(addr)


def unmap(addr: int, n: int) -> None:
    _libc.munmap(addr, n)


# -- processes ------------------------------------------------------------------------


def child(body: Callable[[], None]) -> int:
    """Fork a child that runs ``body`` and ``_exit``s: 0 if it returned, 1 if it raised.
    Returns the pid, in the parent."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def reap(pid: int, what: str) -> tuple[int, Any]:
    """``wait4`` for ``pid``; the time it returned and the child's rusage."""
    _, status, ru = os.wait4(pid, 0)
    t = now()
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise HostError(f"{what}: the child failed (wait status {status:#x})")
    return t, ru


def cpu_ns(ru: Any) -> int:
    """A child's user plus system time. Only the sum is exact; Linux splits it between
    the two by clock-tick samples, which a short-lived child seldom gets."""
    return round((ru.ru_utime + ru.ru_stime) * 1e9)


class Stamps:
    """A shared page of 64-bit slots: a child writes, the parent reads after ``wait4``
    (MAP_SHARED anonymous memory, inherited across fork)."""

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, PAGE)

    def put(self, *values: int) -> None:
        struct.pack_into(f"{len(values)}q", self.page, 0, *values)

    def put_at(self, slot: int, value: int) -> None:
        struct.pack_into("q", self.page, 8 * slot, value)

    def get(self, n: int) -> tuple[int, ...]:
        return struct.unpack_from(f"{n}q", self.page, 0)

    def get_at(self, slot: int) -> int:
        return struct.unpack_from("q", self.page, 8 * slot)[0]


# -- the benchmarks -------------------------------------------------------------------


def fork_exit(st: Stamps, parent_mib: int) -> Sample:
    """fork, ``_exit(0)`` at once, ``wait4``; the parent holds ``parent_mib`` MiB more."""
    n = parent_mib * MIB
    addr = map_anon(n) if n else 0
    try:
        if n:
            ctypes.memset(addr, 1, n)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = now()
        pid = os.fork()
        if pid == 0:
            st.put_at(0, now())
            os._exit(0)
        t1, ru = reap(pid, "fork_exit")
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    finally:
        if n:
            unmap(addr, n)
    t_exit = st.get_at(0)
    return {
        "latency_ns": t1 - t0,
        "fork_ns": t_exit - t0,
        "exit_ns": t1 - t_exit,
        "child_minflt": ru.ru_minflt,
        "parent_minflt": f1 - f0,
        "child_cpu_ns": cpu_ns(ru),
    }


def touch_exit(st: Stamps, mib: int) -> Sample:
    """The child maps ``mib`` MiB, writes it twice (faults, then the write alone),
    stamps and exits; the parent stamps when ``wait4`` returns."""
    n = mib * MIB

    def body() -> None:
        t1 = t2 = t3 = 0
        if n:
            addr = map_anon(n)
            t1 = now()
            ctypes.memset(addr, 1, n)
            t2 = now()
            ctypes.memset(addr, 2, n)
            t3 = now()
        st.put(t2 - t1, t3 - t2)
        st.put_at(2, now())

    pid = child(body)
    t5, ru = reap(pid, "touch_exit")
    fault, write = st.get(2)
    return {
        "fault_ns": fault,
        "write_ns": write,
        "exit_ns": t5 - st.get_at(2),
        "child_minflt": ru.ru_minflt,
        "child_cpu_ns": cpu_ns(ru),
    }


def copy(st: Stamps, mib: int) -> Sample:
    """memset and memmove of ``mib`` MiB in memory already mapped, in a child."""
    n = mib * MIB

    def body() -> None:
        src, dst = map_anon(n), map_anon(n)
        ctypes.memset(src, 1, n)
        ctypes.memset(dst, 2, n)
        t0 = now()
        ctypes.memset(dst, 0, n)
        t1 = now()
        ctypes.memmove(dst, src, n)
        t2 = now()
        st.put(t1 - t0, t2 - t1)

    reap(child(body), "copy")
    zero, cp = st.get(2)
    return {"zero_ns": zero, "copy_ns": cp}


def exec_true(st: Stamps, program: str) -> Sample:
    """fork, ``execv`` of a small program, ``wait4``."""
    t0 = now()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(program, [program])
        finally:
            os._exit(127)
    t1, ru = reap(pid, f"exec of {program}")
    return {"latency_ns": t1 - t0, "child_minflt": ru.ru_minflt, "child_cpu_ns": cpu_ns(ru)}


def cow(st: Stamps, mib: int) -> Sample:
    """The parent writes ``mib`` MiB and forks; the child writes every page (copy on
    write), writes again, and exits."""
    n = mib * MIB
    addr = map_anon(n) if n else 0
    try:
        if n:
            ctypes.memset(addr, 1, n)

        def body() -> None:
            t1 = now()
            t2 = t3 = t1
            if n:
                ctypes.memset(addr, 2, n)
                t2 = now()
                ctypes.memset(addr, 3, n)
                t3 = now()
            st.put(t1, t2 - t1, t3 - t2)
            st.put_at(3, now())

        t0 = now()
        pid = child(body)
        t5, ru = reap(pid, "cow")
        start, fault, write = st.get(3)
    finally:
        if n:
            unmap(addr, n)
    return {
        "fork_ns": start - t0,
        "fault_ns": fault,
        "write_ns": write,
        "exit_ns": t5 - st.get_at(3),
        "child_minflt": ru.ru_minflt,
    }


def file_read(st: Stamps, mib: int, path: str) -> Sample:
    """The child maps ``mib`` MiB of a cached file and reads it through a 1 MiB buffer,
    twice (faults, then the copy alone)."""
    n = mib * MIB

    def body() -> None:
        fd = os.open(path, os.O_RDONLY)
        buf = map_anon(READ_CHUNK)
        ctypes.memset(buf, 0, READ_CHUNK)
        t1 = t2 = t3 = 0
        if n:
            addr = map_file(fd, n)
            t1 = now()
            for off in range(0, n, READ_CHUNK):
                ctypes.memmove(buf, addr + off, READ_CHUNK)
            t2 = now()
            for off in range(0, n, READ_CHUNK):
                ctypes.memmove(buf, addr + off, READ_CHUNK)
            t3 = now()
        st.put(t2 - t1, t3 - t2)

    pid = child(body)
    _, ru = reap(pid, "file")
    fault, read = st.get(2)
    return {"fault_ns": fault, "read_ns": read, "child_minflt": ru.ru_minflt}


def concurrent(st: Stamps, children: int, mib: int) -> dict[str, list[int]]:
    """``children`` children each write ``mib`` MiB, wait until all have, and exit at
    once; each one's exit latency (its stamp to the parent's ``wait4`` return)."""
    n = mib * MIB
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids: dict[int, int] = {}
    try:
        for i in range(children):

            def body(i: int = i) -> None:
                os.close(ready_r)
                os.close(go_w)
                if n:
                    addr = map_anon(n)
                    ctypes.memset(addr, 1, n)
                os.write(ready_w, b"r")
                os.read(go_r, 1)
                st.put_at(i, now())

            pids[child(body)] = i
        got = 0
        while got < children:
            got += len(os.read(ready_r, children - got))
        os.write(go_w, b"g" * children)
        lat = [0] * children
        for _ in range(children):
            pid, status, _ = os.wait4(-1, 0)
            t = now()
            if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                raise HostError(f"concurrent: a child failed (wait status {status:#x})")
            i = pids[pid]
            lat[i] = t - st.get_at(i)
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    return {"exit_ns": lat}


# -- the machine ----------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def parent_layout() -> dict[str, int]:
    """This process's address space as fork sees it: mappings and resident pages."""
    with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
        entries = sum(1 for _ in f)
    return {
        "entries": entries,
        "anon_pages": _status_kib("RssAnon") * 1024 // PAGE,
        "file_pages": _status_kib("RssFile") * 1024 // PAGE,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "system": platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "ncpu": os.cpu_count() or 1,
        "page_size": PAGE,
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "python": platform.python_version(),
    }


# -- the run --------------------------------------------------------------------------


@contextmanager
def cached_file(mib: int) -> Iterator[str]:
    """A temporary file of ``mib`` MiB, written and read once so it is in the page
    cache; removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="exitsim-calibrate-")
    try:
        block = b"\x5a" * MIB
        with os.fdopen(fd, "wb") as f:
            for _ in range(max(mib, 1)):
                f.write(block)
        with open(path, "rb") as f:
            while f.read(MIB):
                pass
        yield path
    finally:
        os.unlink(path)


def turned(items: list[int], rep: int) -> list[int]:
    """``items`` rotated by ``rep``: each size comes first in turn."""
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def run(
    repeats: int, mib: list[int], warmup: int = 1, say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every benchmark ``repeats`` times (after ``warmup`` repeats thrown away), at the
    sizes ``mib`` (MiB, 0 allowed). Returns the document the script prints."""
    if repeats < 1:
        raise HostError(f"repeats must be at least 1 (got {repeats})")
    if not mib or any(m < 0 for m in mib):
        raise HostError(f"sizes must be MiB counts of 0 or more (got {mib})")
    program = TRUE if os.access(TRUE, os.X_OK) else shutil.which("true")
    if program is None:
        raise HostError("no true(1) program to exec")
    big = max(max(mib), 1)
    ncpu = os.cpu_count() or 1
    counts = sorted({1, 2, min(ncpu, SLOTS)})
    sizes = sorted(set(mib))
    st = Stamps()
    layout = parent_layout()
    samples: dict[str, dict[str, dict[str, list[int]]]] = {
        "fork_exit": {},
        "touch_exit": {},
        "copy": {},
        "exec": {},
        "cow": {},
        "file": {},
        "concurrent": {},
    }
    load0 = os.getloadavg()[0]
    every = max(1, repeats // 10)
    t0 = time.monotonic()
    with cached_file(big) as path:
        for rep in range(warmup + repeats):
            keep = rep >= warmup
            done = rep - warmup + 1
            if say is not None and (not keep or done % every == 0 or done == repeats):
                tag = "warm-up" if not keep else f"repeat {done}/{repeats}"
                say(f"{tag} ({time.monotonic() - t0:.0f} s)")

            def add(bench: str, key: int, s: Sample, keep: bool = keep) -> None:
                if keep:
                    cols = samples[bench].setdefault(str(key), {})
                    for field, v in s.items():
                        cols.setdefault(field, []).append(v)

            for m in turned(sizes, rep):
                add("fork_exit", m, fork_exit(st, m))
            for m in turned(sizes, rep):
                add("touch_exit", m, touch_exit(st, m))
            add("copy", big, copy(st, big))
            add("exec", 0, exec_true(st, program))
            for m in turned(sizes, rep):
                add("cow", m, cow(st, m))
            for m in turned([m for m in sizes if m], rep):
                add("file", m, file_read(st, m, path))
            for c in turned(counts, rep):
                for i, lat in enumerate(concurrent(st, c, big)["exit_ns"]):
                    add("concurrent", c, {"exit_ns": lat, "child": i})
    return {
        "format": FORMAT,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.monotonic() - t0, 1),
        "repeats": repeats,
        "warmup": warmup,
        "mib": sizes,
        "big_mib": big,
        "program": {"path": program, "bytes": os.path.getsize(program)},
        "parent": layout,
        "samples": samples,
    }


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole MiB: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="exitsim's host microbenchmarks (JSON out)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--mib", type=_sizes, default=[0, 16, 32, 64])
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        doc = run(args.repeats, args.mib, args.warmup, lambda s: print(f"# {s}", file=sys.stderr))
    except (HostError, OSError) as e:
        print(f"host: {e}", file=sys.stderr)
        return 2
    json.dump(doc, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
