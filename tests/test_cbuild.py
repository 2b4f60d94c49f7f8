"""The C-build workload (cbuild) and its openbsd-kernel preset: the structure of the
captured build, the measured call mix, and the kernel-lock rule applied to it."""

from __future__ import annotations

from collections import Counter

import pytest

from exitsim.cli import main
from exitsim.kern.syscall import LOCKED
from exitsim.sim import SimConfig, simulate
from exitsim.workloads.cbuild import (
    CBuildParams,
    OpenBSDKernelParams,
    link_programs,
    measured_calls,
    mix_of,
    unit_programs,
)
from exitsim.workloads.program import spread


def _run(**params: object) -> dict:
    return simulate(
        SimConfig(policy="purge", arch="amd64", cpus=4, workload="cbuild", workload_params=params)
    )


def test_the_build_has_the_captured_structure() -> None:
    """34 units of gcc -> cc1, as; then ar, ranlib and gcc -> collect2 -> ld: the Lua
    capture's 109 processes less its final touch."""
    r = _run()
    comms = Counter(p["comm"] for p in r["per_process"])
    assert comms == Counter(
        {"gcc": 35, "cc1": 34, "as": 34, "make": 1, "ar": 1, "ranlib": 1, "collect2": 1, "ld": 1}
    )


def test_the_kernel_preset_has_no_library_and_a_thousand_units() -> None:
    p = OpenBSDKernelParams()
    assert p.units == 1000 and not p.archive
    r = simulate(
        SimConfig(arch="amd64", cpus=4, workload="openbsd-kernel", workload_params={"units": 5})
    )
    comms = Counter(x["comm"] for x in r["per_process"])
    assert comms["cc1"] == 5 and "ar" not in comms and comms["ld"] == 1


def test_spread_places_each_call_evenly_and_keeps_every_call() -> None:
    mix = (("open", 2), ("read", 6))
    order = spread(mix)
    assert Counter(order) == {"open": 2, "read": 6}
    assert order.index("open") in (1, 2) and order[5:].count("open") == 1
    assert spread(mix) == order  # the same every time


def test_every_locked_call_of_the_mix_takes_the_kernel_lock_once() -> None:
    """Turning the measured calls off removes exactly the kernel-lock acquisitions of
    the locked calls they hold, process by process."""
    base = _run(calls_scale=0.0)
    full = _run()
    locked = 0
    params = CBuildParams()
    programs = [unit_programs(params, 0, u) for u in range(params.units)]
    for progs in programs:
        for prog in progs.values():
            locked += sum(n for name, n in prog.mix if name in LOCKED)
    link = link_programs(params)
    locked += sum(n for prog in link.values() for name, n in prog.mix if name in LOCKED)
    locked += sum(n for name, n in mix_of("make", 1.0) if name in LOCKED)
    got = (
        full["locks"]["kernel_lock"]["acquisitions"] - base["locks"]["kernel_lock"]["acquisitions"]
    )
    assert locked > 0 and got == locked


def test_the_shipped_call_counts_name_the_compile_programs() -> None:
    calls = measured_calls()
    for prog in ("cc1", "as", "gcc"):
        assert sum(calls[prog].values()) > 0, prog
    assert mix_of("no-such-program", 1.0) == ()
    assert all(n > 0 for _, n in mix_of("cc1", 0.5))


def test_same_seed_same_result() -> None:
    assert _run(units=6) == _run(units=6)


@pytest.mark.parametrize(
    "param, words",
    [("calls_scale=-1", "calls_scale"), ("units=0", "units"), ("cc1_user_sigma=9", "sigma")],
)
def test_bad_parameter_is_one_line_and_status_2(
    param: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--workload", "cbuild", "--param", param, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
