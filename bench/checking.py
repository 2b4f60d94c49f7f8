"""The checker over every scenario, design and arch at the default bound: the table in
docs/checking.md and docs/benchmarks.md. Prints one markdown row per run as it finishes,
then each design and arch's total seconds (the target: under 30 s).

Usage: python bench/checking.py [--preemptions K] [--designs a,b] [--arches a,b]
"""

from __future__ import annotations

import argparse
import platform

from exitsim.check.run import search
from exitsim.check.scenarios import SCENARIOS
from exitsim.policies.registry import get_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preemptions", type=int, default=2)
    ap.add_argument("--designs", default="reaper,purge,purge+pmap_purge")
    ap.add_argument("--arches", default="amd64,arm64")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    a = ap.parse_args()
    print(
        f"<!-- {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, preemptions {a.preemptions} -->"
    )
    print("| scenario | design | arch | schedules | states | seconds | result |")
    print("|---|---|---|---|---|---|---|")
    total: dict[tuple[str, str], float] = {}
    for name in a.scenarios.split(","):
        for design in a.designs.split(","):
            for arch in a.arches.split(","):
                r = search(SCENARIOS[name], lambda d=design: get_policy(d), arch, a.preemptions)
                total[design, arch] = total.get((design, arch), 0.0) + r.seconds
                result = "no violation" if r.violation is None else f"VIOLATION: {r.violation}"
                print(
                    f"| {name} | {design} | {arch} | {r.schedules} | {r.states} | "
                    f"{r.seconds:.1f} | {result} |",
                    flush=True,
                )
    # The target is per design and arch: every scenario in under 30 s.
    for (design, arch), seconds in total.items():
        print(f"<!-- {design} {arch}: every scenario in {seconds:.1f} s -->")


if __name__ == "__main__":
    main()
