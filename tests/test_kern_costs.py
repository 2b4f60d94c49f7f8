"""System call bodies and exit1's steps, each with its own cost (kern/syscall.py,
kern/exit.py; docs/model.md "System call and exit1 costs").

exit1's work besides the address space is the steps kern_exit.c takes for the process,
in its order, each a function of its own under the kernel lock; a locked system call's
body is its path lookup plus its own work. Steps are observed by wrapping the function
the kernel path calls through its module attribute (``monkeypatch``), never by changing
what it does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.kern import exit as exit_mod
from exitsim.kern.exit import sys_exit
from exitsim.kern.fork import thread_fork
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import P_THREAD, Proc
from exitsim.kern.sig import userret
from exitsim.kern.syscall import BODY, LOCKED, NOLOCK, body_ns, syscall, user
from exitsim.machine.costs import COST_KEYS, builtin_profile, parse_profile
from tests.kernkit import Body, make_kernel, run_to_end, user_process

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ["amd64", "arm64"]

#: exit1 step 6 for the process, then the list work of steps 8-9, in kern_exit.c's order.
EXIT1_STEPS = [
    "fdfree",
    "cancel_all_itimers",
    "semexit",
    "killjobc",
    "acct_process",
    "unveil_destroy",
    "exit_lists",
]
#: The keys bench/syscalls.py measures.
MEASURED_KEYS = [
    "namei_ns",
    "open_ns",
    "stat_ns",
    "access_ns",
    "readlink_ns",
    "getdents_ns",
    "read_ns",
    "write_ns",
    "close_ns",
    "fdfree_file_ns",
    "itimer_ns",
    "semexit_ns",
    "acct_ns",
]
#: The keys that are assumptions on every arch.
ASSUMED_KEYS = ["killjobc_ns", "unveil_ns", "exit_lists_ns"]


# -- exit1's steps ---------------------------------------------------------------------


def _record_steps(monkeypatch: pytest.MonkeyPatch, seen: list[tuple[str, Proc, bool, int]]) -> None:
    """Wrap every step: note its name, the thread, whether the thread holds the kernel
    lock, and the simulated time the step took."""
    for name in EXIT1_STEPS:
        orig = getattr(exit_mod, name)

        def wrapped(k: Kernel, p: Proc, *a: Any, _orig: Any = orig, _name: str = name) -> KPath:
            held = k.kernel_lock.holds(p)
            t0 = k.now
            yield from _orig(k, p, *a)
            seen.append((_name, p, held, k.now - t0))

        monkeypatch.setattr(exit_mod, name, wrapped)


@pytest.mark.parametrize("policy", ["reaper", "purge+pmap_purge", "no-reaper"])
def test_exit1_runs_each_step_once_for_the_main_thread_and_none_for_a_sibling(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """kern_exit.c exit1 step 6: fdfree, cancel_all_itimers, semexit, killjobc,
    acct_process and unveil_destroy run for the process, once, by its main thread
    (P_THREAD clear), in that order and with the kernel lock held; a sibling thread
    goes through exit1 without them. Each takes its figure: three files closed, the
    timers, job control and the list work; no SysV undo, accounting or unveil by
    default."""
    seen: list[tuple[str, Proc, bool, int]] = []
    _record_steps(monkeypatch, seen)
    entered: list[Proc] = []
    orig_exit1 = exit_mod.exit1

    def exit1(k: Kernel, p: Proc, xexit: int, xsig: int, flags: int) -> KPath:
        entered.append(p)
        yield from orig_exit1(k, p, xexit, xsig, flags)

    monkeypatch.setattr(exit_mod, "exit1", exit1)
    siblings: list[Proc] = []

    def sibling(k: Kernel, t: Proc) -> KPath:
        while True:
            yield user(10_000)
            yield from userret(k, t)

    def body(k: Kernel, p: Proc) -> Body:
        for i in range(2):
            siblings.append((yield from thread_fork(k, p, f"sib{i}", lambda t: sibling(k, t))))
        yield user(100_000)
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, "amd64", cpus=2)
    pr = user_process(k, "threaded", body)
    run_to_end(k)
    main = pr.ps_mainproc
    assert main is not None and not main.p_flag & P_THREAD
    assert set(entered) == {main, *siblings}, "every thread went through exit1"
    assert [name for name, *_ in seen] == EXIT1_STEPS
    assert all(p is main for _, p, _, _ in seen)
    assert all(held for _, _, held, _ in seen), "exit1 holds the kernel lock in every step"
    c = k.costs
    took = {name: ns for name, _, _, ns in seen}
    assert took == {
        "fdfree": pr.ps_nfiles * c.fdfree_file_ns,
        "cancel_all_itimers": c.itimer_ns,
        "semexit": 0,
        "killjobc": c.killjobc_ns,
        "acct_process": 0,
        "unveil_destroy": 0,
        "exit_lists": c.exit_lists_ns,
    }


def _time_step(step: str, *args: Any) -> int:
    """The simulated time one exit1 step takes, called with ``args``, on one CPU with
    the kernel lock held, as exit1 holds it."""
    took: list[int] = []

    def body(k: Kernel, p: Proc) -> Body:
        yield from KERNEL_LOCK(k)
        t0 = k.now
        yield from getattr(exit_mod, step)(k, p, *args)
        took.append(k.now - t0)
        yield from KERNEL_UNLOCK(k)
        yield from sys_exit(k, p, 0)

    k = make_kernel("purge+pmap_purge", "amd64", cpus=1)
    user_process(k, step, body)
    run_to_end(k)
    return took[0]


@pytest.mark.parametrize("nfiles", [0, 1, 3, 64])
def test_fdfree_time_scales_with_the_open_files(nfiles: int) -> None:
    """kern_descrip.c fdfree: one closef per open file, so its time is the number of
    files times the per-file figure (bench/syscalls.py: 64 files against none)."""
    c = builtin_profile("amd64").costs
    assert _time_step("fdfree", nfiles) == nfiles * c.fdfree_file_ns


@pytest.mark.parametrize(
    ("step", "args", "key", "times"),
    [
        ("semexit", (True,), "semexit_ns", 1),
        ("semexit", (False,), "semexit_ns", 0),
        ("acct_process", (True,), "acct_ns", 1),
        ("acct_process", (False,), "acct_ns", 0),
        ("unveil_destroy", (5,), "unveil_ns", 5),
        ("unveil_destroy", (0,), "unveil_ns", 0),
    ],
)
def test_an_optional_step_costs_only_what_the_process_has(
    step: str, args: tuple[Any, ...], key: str, times: int
) -> None:
    """semexit only with SEM_UNDO entries, acct_process only with accounting on,
    unveil_destroy per unveiled path."""
    c = builtin_profile("amd64").costs
    assert _time_step(step, *args) == times * getattr(c, key)


def test_exit_step_defaults_are_the_documented_ones() -> None:
    """Three files (stdin, stdout, stderr), no SEM_UNDO, no unveil, and accounting
    off (rc.conf accounting=NO)."""
    from exitsim.kern.proc import Process

    pr = Process(2, "x", None)
    assert (pr.ps_nfiles, pr.ps_semundo, pr.ps_unveil_paths) == (3, False, 0)
    assert exit_mod.ACCOUNTING is False


# -- system calls ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BODY))
def test_a_syscall_holds_the_kernel_lock_for_exactly_its_body(name: str) -> None:
    """init_sysent.c: a call without SY_NOLOCK runs its body under the kernel lock, and
    the lock is held for that body and nothing else (one CPU, so no one else holds it
    meanwhile); a SY_NOLOCK call never takes it. Entry and return are outside."""
    got: dict[str, int] = {}

    def body(k: Kernel, p: Proc) -> Body:
        st = k.kernel_lock.stats
        hold0, acq0, t0 = st.hold_ns, st.acquisitions, k.now
        yield from syscall(k, p, name)
        got["hold"] = st.hold_ns - hold0
        got["acq"] = st.acquisitions - acq0
        got["took"] = k.now - t0
        yield from sys_exit(k, p, 0)

    k = make_kernel("purge+pmap_purge", "amd64", cpus=1)
    user_process(k, "caller", body)
    run_to_end(k)
    c = k.costs
    assert got["took"] == c.syscall_ns + body_ns(c, name)
    if name in LOCKED:
        assert got == {"hold": body_ns(c, name), "acq": 1, "took": got["took"]}
    else:
        assert name in NOLOCK
        assert (got["hold"], got["acq"]) == (0, 0)


def test_a_syscall_body_is_its_lookup_plus_its_own_work() -> None:
    """The calls with a path look it up (namei) and then do their own work; the calls
    on a descriptor do only their own work."""
    c = builtin_profile("amd64").costs
    assert body_ns(c, "open") == c.namei_ns + c.open_ns
    for name in ("stat", "lstat", "fstatat"):
        assert body_ns(c, name) == c.namei_ns + c.stat_ns
    assert body_ns(c, "fstat") == c.stat_ns
    assert body_ns(c, "access") == c.namei_ns + c.access_ns
    assert body_ns(c, "readlink") == c.namei_ns + c.readlink_ns
    assert body_ns(c, "getdents") == c.getdents_ns
    assert (body_ns(c, "read"), body_ns(c, "write"), body_ns(c, "close")) == (
        c.read_ns,
        c.write_ns,
        c.close_ns,
    )
    assert body_ns(c, "getpid") == 0


@pytest.mark.parametrize(
    ("name", "msg"),
    [("fork", "a path of its own"), ("mmap", "a path of its own"), ("ioctl", "neither table")],
)
def test_syscall_refuses_a_call_without_a_generic_body(name: str, msg: str) -> None:
    """fork, exec, exit, wait and the VM calls have their own paths; a name in neither
    table is a mistake."""
    k = make_kernel("purge+pmap_purge", "amd64", cpus=1)
    with pytest.raises(ValueError, match=msg):
        next(syscall(k, None, name))  # type: ignore[arg-type]


# -- the profiles ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_every_new_key_is_in_the_profile_with_its_source(arch: str) -> None:
    """Each new cost is in both profiles with a source: measured here on amd64 (the
    machine is amd64), the same figure as a stated assumption on arm64, or an
    assumption; the single figures they replace are gone."""
    prof = builtin_profile(arch)
    for key in (*MEASURED_KEYS, *ASSUMED_KEYS):
        assert key in COST_KEYS
        src = prof.sources[key]
        assert src.strip(), key
        if key in ASSUMED_KEYS or arch == "arm64":
            assert src.startswith("assumption"), key
        else:
            assert src.startswith("measured here by bench/syscalls.py (Linux "), key
            assert "OpenBSD" in src, f"{key}: the source says what differs on OpenBSD"
    for gone in ("fs_syscall_ns", "io_syscall_ns", "exit_ns"):
        assert gone not in COST_KEYS


def test_bench_syscalls_toml_is_a_cost_profile_fragment() -> None:
    """bench/syscalls.py --toml prints [costs.X] entries that a profile takes as they
    are: known keys, whole non-negative nanoseconds, a "measured here" source each.
    It builds bench/syscalls.c with cc (the machine and CI have it)."""
    if shutil.which("cc") is None:
        pytest.fail(
            "no C compiler `cc` on PATH: bench/syscalls.py needs one to build bench/syscalls.c"
        )
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "syscalls.py"), "--toml", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    fragment = tomllib.loads(done.stdout)
    assert list(fragment) == ["costs"]
    assert list(fragment["costs"]) == MEASURED_KEYS
    for key, entry in fragment["costs"].items():
        assert set(entry) == {"value", "source"}, key
        assert isinstance(entry["value"], int) and entry["value"] >= 0, key
        assert entry["source"].startswith("measured here by bench/syscalls.py (Linux "), key
    path = ROOT / "src" / "exitsim" / "machine" / "profiles" / "amd64.toml"
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    doc["costs"].update(fragment["costs"])
    prof = parse_profile(tomli_w.dumps(doc), "amd64+bench.toml")
    for key, entry in fragment["costs"].items():
        assert getattr(prof.costs, key) == entry["value"]
