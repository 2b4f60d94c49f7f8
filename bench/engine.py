"""Engine speed: ops per second on a lock-contention model, against a bare loop.

Both sides run the same generator threads yielding the same ops (user compute, take the
kernel lock, a short kernel section, release it): the engine with all it does (CPUs,
accounting, statistics, the chooser seam), the bare loop with only a heap, a lock owner
and a FIFO of waiters. Each side runs several times, alternating, and the best time of
each counts, so both are measured on the same machine in the same minute.

The last line printed is ``engine/bare ratio: R`` (engine ops/s over bare-loop ops/s).
Usage: python bench/engine.py [--threads N] [--iterations N] [--repeat N]
"""

from __future__ import annotations

import argparse
import heapq
import platform
import time
from collections import deque

from exitsim.engine.locks import TicketLock
from exitsim.engine.ops import SYS, USER, Acquire, Release, Run
from exitsim.engine.sched import Engine, EngineConfig

# Long enough that no user run is cut: the bare loop has no preemption.
QUANTUM = 10**12


def worker(lock: TicketLock, iters: int, k: int):
    user = Run(10_000 + 37 * k, USER)  # distinct per thread, so arrivals interleave
    kern = Run(2_000, SYS)
    acq = Acquire(lock)
    rel = Release(lock)
    for _ in range(iters):
        yield user
        yield acq
        yield kern
        yield rel


def run_engine(nthreads: int, iters: int) -> tuple[dict, float]:
    eng = Engine(EngineConfig(ncpu=nthreads, ctxsw_ns=0, quantum_ns=QUANTUM))
    lock = TicketLock("kernel_lock")
    for k in range(nthreads):
        eng.spawn(f"t{k}", worker(lock, iters, k))
    t0 = time.perf_counter()
    eng.run()
    eng.finish()
    elapsed = time.perf_counter() - t0
    result = {
        "ops": eng.ops,
        "makespan_ns": eng.now,
        "threads": [(t.user_ns, t.sys_ns, t.spin_ns) for t in eng.threads],
        "lock": lock.stats.as_dict(),
    }
    return result, elapsed


def run_bare(nthreads: int, iters: int) -> tuple[dict, float]:
    """One thread per CPU, so no scheduling; a heap, a lock owner, a FIFO of waiters,
    and the same bookkeeping: per-thread user/sys/spin time and the lock's counters."""
    lock = TicketLock("unused")
    gens = [worker(lock, iters, k) for k in range(nthreads)]
    user = [0] * nthreads
    sys_ = [0] * nthreads
    spin = [0] * nthreads
    spin_since = [-1] * nthreads
    acq = cont = wait = max_wait = hold = max_hold = 0
    held_since = 0
    heap: list[tuple[int, int, int]] = []
    seq = 0
    for i in range(nthreads):
        seq += 1
        heap.append((0, seq, i))
    heapq.heapify(heap)
    owner: int | None = None
    waiters: deque[tuple[int, int]] = deque()
    ops = 0
    now = 0
    push, pop = heapq.heappush, heapq.heappop
    t0 = time.perf_counter()
    while heap:
        now, _, i = pop(heap)
        send = gens[i].send
        if owner == i and spin_since[i] >= 0:
            # Handed the lock while spinning: the spin ends now.
            dt = now - spin_since[i]
            spin[i] += dt
            sys_[i] += dt
            spin_since[i] = -1
        while True:
            try:
                op = send(None)
            except StopIteration:
                break
            ops += 1
            cls = type(op)
            if cls is Run:
                if op.mode == USER:
                    user[i] += op.ns
                else:
                    sys_[i] += op.ns
                seq += 1
                push(heap, (now + op.ns, seq, i))
                break
            if cls is Acquire:
                if owner is None and not waiters:
                    owner = i
                    held_since = now
                    acq += 1
                    continue
                cont += 1
                waiters.append((i, now))
                spin_since[i] = now
                break
            # Release: hand to the first waiter, who goes on now.
            h = now - held_since
            hold += h
            max_hold = max(max_hold, h)
            if waiters:
                owner, since = waiters.popleft()
                held_since = now
                acq += 1
                wait += now - since
                max_wait = max(max_wait, now - since)
                seq += 1
                push(heap, (now, seq, owner))
            else:
                owner = None
    elapsed = time.perf_counter() - t0
    result = {
        "ops": ops,
        "makespan_ns": now,
        "threads": [(user[k], sys_[k], spin[k]) for k in range(nthreads)],
        "lock": {
            "acquisitions": acq,
            "contended": cont,
            "wait_ns": wait,
            "max_wait_ns": max_wait,
            "hold_ns": hold,
            "max_hold_ns": max_hold,
        },
    }
    return result, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    best_e = best_b = float("inf")
    for _ in range(a.repeat):
        res_e, te = run_engine(a.threads, a.iterations)
        res_b, tb = run_bare(a.threads, a.iterations)
        best_e, best_b = min(best_e, te), min(best_b, tb)
    # Same work means same answers: times, makespan and lock counters must agree.
    if res_e != res_b:
        diff = [k for k in res_e if res_e[k] != res_b[k]]
        raise SystemExit(f"the two sides disagree on {', '.join(diff)}")
    ops_e = ops_b = res_e["ops"]
    rate_e, rate_b = ops_e / best_e, ops_b / best_b
    print(
        f"machine: {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}"
    )
    print(
        f"model: {a.threads} threads on {a.threads} CPUs, {a.iterations} rounds, "
        f"{ops_e} ops, best of {a.repeat}"
    )
    print(f"engine: {rate_e:,.0f} ops/s ({best_e:.3f} s)")
    print(f"bare loop: {rate_b:,.0f} ops/s ({best_b:.3f} s)")
    print(f"engine/bare ratio: {rate_e / rate_b:.2f}")


if __name__ == "__main__":
    main()
