"""Per-CPU MMU state and TLB liveness as the hardware has it (docs/model.md, "Per-CPU
MMU state"): arm64 keeps the ASID current in TTBR1 after TTBR0 goes to the empty table;
amd64 keeps %cr3 after ``pmap_deactivate`` clears ``ci_proc_pmap``, and loads the
kernel's %cr3 when a CPU switches to idle (nothing lazy). ``pmap_destroy`` while any CPU
still has the pmap loaded is design.md invariant 8; ``exitsim check --allow 8`` counts
those and searches on."""

from __future__ import annotations

import json

import pytest

from exitsim.check.run import search
from exitsim.check.scenarios import SCENARIOS
from exitsim.cli import main
from exitsim.engine.errors import InvariantViolation
from exitsim.engine.ops import USER, Run
from exitsim.engine.thread import Thread
from exitsim.kern.exit import sys_exit
from exitsim.kern.fork import thread_fork
from exitsim.kern.sig import userret
from exitsim.policies.registry import get_policy
from exitsim.vm.fault import uvm_touch
from exitsim.vm.map import uvm_map, uvm_unmap
from exitsim.vm.page import tlb_entry_is_dead
from exitsim.vm.pmap import pmap_activate, pmap_active_cpus, pmap_deactivate, pmap_destroy
from exitsim.vm.vmspace import uvmspace_alloc
from tests.clikit import assert_usage_error
from tests.kernkit import make_kernel, run_to_end, user_process
from tests.vmkit import Body, VmKit

VA = 0x1000


def _loaded(kit: VmKit, me: Thread, out: dict[str, object]) -> Body:
    """A process whose first thread ``me`` maps and touches two pages here."""
    vm = yield from uvmspace_alloc(kit.uvm, me, "A")
    kit.vm_of[me.tid] = vm
    pmap_activate(kit.uvm, me, vm.pmap)
    yield from uvm_map(kit.uvm, me, vm.vm_map, VA, 2)
    yield from uvm_touch(kit.uvm, me, vm, VA, 2, write=True)
    out["vm"] = vm
    out["cpu"] = me.cpu
    return vm


def test_arm64_the_asid_stays_current_after_pmap_deactivate_until_the_switch() -> None:
    """pmap_deactivate points TTBR0 at the empty table; cpu_setttb's ASID in TTBR1 and
    ci_curpm stay, so the cached translations stay usable there until the next
    cpu_switchto loads the kernel's ASID."""
    kit = VmKit("arm64", 1)
    out: dict[str, object] = {}

    def body(me: Thread) -> Body:
        vm = yield from _loaded(kit, me, out)
        pm = vm.pmap
        m = kit.machine
        c = me.cpu
        assert (m.ttbr0[c], m.asid[c], m.curpm[c]) == (pm, pm, pm)
        assert m.tlb.count(c) > 0
        pmap_deactivate(kit.uvm, me, pm)
        out["after_deactivate"] = (m.ttbr0[c], m.asid[c], m.curpm[c], pm.pm_active)
        out["dead_while_current"] = tlb_entry_is_dead(kit.uvm, pm, c)
        out["pm"] = pm

    kit.spawn("A", body)
    kit.run()
    pm = out["pm"]
    assert out["after_deactivate"] == (None, pm, pm, 0)
    assert out["dead_while_current"] is False
    # The thread is gone and the CPU idles: the kernel's ASID is current, and with no
    # thread left on the pmap its tag can never be current again.
    m = kit.machine
    assert (m.ttbr0[0], m.asid[0], m.curpm[0]) == (None, None, None)
    assert tlb_entry_is_dead(kit.uvm, pm, 0)  # type: ignore[arg-type]


def test_arm64_an_entry_lives_while_a_thread_may_still_load_its_asid() -> None:
    """Off the CPU, an entry is usable again as soon as pmap_setttb makes its ASID
    current: dead only once no thread runs on the pmap (pm_active 0)."""
    kit = VmKit("arm64", 1)
    out: dict[str, object] = {}

    def body(me: Thread) -> Body:
        yield from _loaded(kit, me, out)

    kit.spawn("A", body)
    kit.run()
    pm = out["vm"].pmap  # type: ignore[attr-defined]
    assert kit.machine.asid[0] is None and pm.pm_active == 1
    assert not tlb_entry_is_dead(kit.uvm, pm, 0)


def test_amd64_pmap_deactivate_stops_shootdowns_but_keeps_cr3() -> None:
    """amd64: ci_proc_pmap goes (no shootdown targets this CPU any more) while %cr3
    keeps the pmap, so its translations stay usable here until the switch."""
    kit = VmKit("amd64", 2)
    out: dict[str, object] = {}

    def body(me: Thread) -> Body:
        vm = yield from _loaded(kit, me, out)
        pm = vm.pmap
        m = kit.machine
        c = me.cpu
        pmap_deactivate(kit.uvm, me, pm)
        out["state"] = (m.ttbr0[c], m.asid[c], m.curpm[c])
        out["targets"] = pmap_active_cpus(kit.uvm, pm, 1 - c)
        out["dead"] = tlb_entry_is_dead(kit.uvm, pm, c)
        out["pm"] = pm

    kit.spawn("A", body)
    kit.run()
    pm = out["pm"]
    assert out["state"] == (pm, pm, None)
    assert out["targets"] == ()
    assert out["dead"] is False
    # Idle loaded the kernel's %cr3: nothing of the pmap is usable on that CPU.
    c = out["cpu"]
    assert (kit.machine.ttbr0[c], kit.machine.curpm[c]) == (None, None)  # type: ignore[index]
    assert tlb_entry_is_dead(kit.uvm, pm, c)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_pmap_destroy_while_another_cpu_has_it_loaded_is_invariant_8(arch: str) -> None:
    """A thread on cpu0 still has the pmap loaded when a thread on cpu1 drops the last
    reference: invariant 8. With 8 allowed, it is counted, and the other CPU keeps the
    pmap loaded: pmap_destroy never unloads it quietly."""
    for allowed in (frozenset(), frozenset({8})):
        kit = VmKit(arch, 2)
        kit.uvm.allowed = allowed
        out: dict[str, object] = {}

        def owner(me: Thread, kit: VmKit = kit, out: dict[str, object] = out) -> Body:
            yield from _loaded(kit, me, out)
            yield Run(50_000)  # still on its CPU, pmap loaded

        def killer(me: Thread, kit: VmKit = kit, out: dict[str, object] = out) -> Body:
            yield Run(10_000)
            pm = out["vm"].pmap  # type: ignore[attr-defined]
            try:
                yield from pmap_destroy(kit.uvm, me, pm)
            except InvariantViolation as e:
                out["error"] = e
            out["loaded"] = kit.machine.loaded_on(pm)

        kit.spawn("A", owner)
        kit.spawn("K", killer)
        kit.run()
        if not allowed:
            err = out["error"]
            assert isinstance(err, InvariantViolation) and err.invariant == 8
            assert "while cpu0 has" in str(err)
        else:
            assert "error" not in out
            assert kit.uvm.tolerated.counts == {8: 1}
            assert kit.uvm.tolerated.first[8].startswith("invariant 8: pmap_destroy of")
            assert out["loaded"] == [0]


def _shootdown_run(sibling_sleeps: bool) -> int:
    """A 2-thread process on 2 CPUs; the sibling touches the region and then either
    keeps computing or exits (its CPU goes idle); then the main thread unmaps the region.
    Returns the IPIs sent."""
    k = make_kernel("purge", "amd64", cpus=2, granularity="exact")

    def worker(p: object) -> Body:
        vm = p.p_vmspace  # type: ignore[attr-defined]
        yield from uvm_touch(k.uvm, p, vm, VA, 2)  # type: ignore[arg-type]
        rounds = 1 if sibling_sleeps else 20
        for _ in range(rounds):
            yield Run(10_000, USER)
            yield from userret(k, p)  # type: ignore[arg-type]
        yield from sys_exit(k, p, 0)  # type: ignore[arg-type]

    def main_body(k: object, p: object) -> Body:
        vm = p.p_vmspace  # type: ignore[attr-defined]
        yield from uvm_map(k.uvm, p, vm.vm_map, VA, 2)  # type: ignore[attr-defined]
        yield from uvm_touch(k.uvm, p, vm, VA, 2, write=True)  # type: ignore[attr-defined]
        yield from thread_fork(k, p, "t1", worker)  # type: ignore[arg-type]
        yield Run(100_000, USER)
        yield from uvm_unmap(k.uvm, p, vm.vm_map, VA, VA + 2)  # type: ignore[attr-defined]
        yield from sys_exit(k, p, 0)  # type: ignore[arg-type]

    user_process(k, "mt", main_body)
    run_to_end(k)
    return k.machine.stats.ipis


def test_amd64_a_cpu_that_went_idle_gets_no_shootdown() -> None:
    """cpu_switchto to idle loads the kernel's %cr3 (locore.S): the CPU the sibling left
    is no target; a CPU where the sibling still runs is."""
    assert _shootdown_run(sibling_sleeps=False) > 0
    assert _shootdown_run(sibling_sleeps=True) == 0


def test_the_exit_window_schedule_replays_with_p(capsys: pytest.CaptureFixture[str]) -> None:
    """The finding of docs/checking.md on threads2, arm64, purge+pmap_purge: the sibling
    wakes the main thread and releases the kernel lock before it switches away, and
    the reaper destroys the pmap while the sibling's CPU still has its ASID current."""
    argv = ["check", "threads2", "--arch", "arm64", "--policy", "purge+pmap_purge"]
    assert main([*argv, "-P", "0*52,1"]) == 1
    out = capsys.readouterr().out
    assert "violation: invariant 8: pmap_destroy of" in out
    assert "cpu0 has its ASID current" in out
    assert main([*argv, "-P", "0*52,1", "--allow", "8"]) == 0
    assert "no violation on this schedule" in capsys.readouterr().out


def test_check_allow_8_counts_the_window_and_searches_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["check", "threads2", "--arch", "amd64", "--policy", "purge", "--preemptions", "1"]
    assert main(argv) == 1
    assert "invariant 8:" in capsys.readouterr().out
    assert main([*argv, "--allow", "8"]) == 0
    out = capsys.readouterr().out
    assert "# allow 8" in out and "tolerated invariant 8 x" in out
    assert "threads2: no violation within 1 preemptions" in out
    assert main([*argv, "--allow", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["violation"] is None and res["allowed"] == [8]
    assert res["tolerated"]["8"]["count"] > 0
    assert res["tolerated"]["8"]["first"].startswith("invariant 8:")


def test_allow_does_not_hide_other_invariants() -> None:
    """Allowing 8 leaves invariant 1 reported: the no-ASID-flush mutant still fails."""
    from pathlib import Path

    from exitsim.policies.registry import load_policy_file

    path = str(Path(__file__).parent / "mutants" / "pmap_purge_no_asid_flush.py")
    r = search(
        SCENARIOS["forkrace"], lambda: load_policy_file(path), "arm64", preemptions=0, allow={8}
    )
    assert r.invariant == 1, r.violation


def test_allow_rejects_an_unknown_invariant(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["check", "threads2", "--allow", "9"], "--allow", capsys)


def test_committed_designs_are_clean_on_single_threaded_scenarios() -> None:
    """The exit window needs a sibling thread: without one, nothing is tolerated."""
    r = search(SCENARIOS["forkrace"], lambda: get_policy("purge+pmap_purge"), "arm64", 1, allow={8})
    assert r.violation is None and r.tolerated == {}
