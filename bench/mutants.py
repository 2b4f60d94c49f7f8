"""A mutation campaign for the checker: every mutant of ``exitsim.check.mutate`` run
through ``exitsim check`` for the committed design, on arm64 and amd64, each in a
process of its own; killed or survived, by which scenario and invariant. Survivors are
matched with their hand classification in bench/mutants_survivors.toml (equivalent, or
a gap of the checker). Prints a markdown table and a summary, writes JSON.

Usage: python bench/mutants.py [--jobs N] [--limit N] [--only TEXT] [--json FILE]
       python bench/mutants.py --list
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from exitsim.check.mutate import Mutant, by_key, generate, mutated

HERE = Path(__file__).resolve().parent
SURVIVORS = HERE / "mutants_survivors.toml"
#: The scope: cheapest first, as a mutant stops at its first finding. ``threads3``
#: is left out (``threads2`` has the same sibling race, at a tenth of the cost).
SCENARIOS = "threads2,transient,nozombie,shm2,forkrace,wait2"
BASELINE = "baseline"


def worker(key: str, design: str, scenarios: list[str], arches: list[str], k: int) -> None:
    """In the child process: run one mutant (or the unmutated tree) and print JSON."""
    m = None if key == BASELINE else by_key(key)
    with mutated(m):
        from exitsim.check.mutate import check_design

        t0 = time.perf_counter()
        out = check_design(design, scenarios, arches, k)
        out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


def run_one(key: str, a: argparse.Namespace) -> dict[str, Any]:
    """Run a mutant in a fresh interpreter (the mutation lives only there)."""
    cmd = [sys.executable, __file__, "--worker", key, "--design", a.design]
    cmd += ["--scenarios", a.scenarios, "--arches", a.arches, "--preemptions", str(a.preemptions)]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"result": "timeout", "seconds": a.timeout}
    if cp.returncode != 0 or not cp.stdout.strip():
        return {"result": "error", "how": cp.stderr.strip().splitlines()[-1:]}
    return json.loads(cp.stdout.strip().splitlines()[-1])


def load_classes(path: Path) -> dict[str, dict[str, str]]:
    """The hand classification of survivors, by mutant key."""
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    return {s["key"]: s for s in data.get("survivor", [])}


def verdict(r: dict[str, Any], cls: dict[str, str] | None) -> str:
    if r["result"] != "survived":
        return r["result"]
    return cls["class"] if cls is not None else "unclassified"


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    count = {v: sum(1 for r in rows if r["verdict"] == v) for v in ("killed", "equivalent", "gap")}
    other = n - sum(count.values())
    live = n - count["equivalent"]
    return {
        "mutants": n,
        **count,
        "other": other,
        "kill_rate": round(count["killed"] / live, 4) if live else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", default="purge+pmap_purge")
    ap.add_argument("--arches", default="arm64,amd64")
    ap.add_argument("--scenarios", default=SCENARIOS)
    ap.add_argument("--preemptions", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N mutants")
    ap.add_argument("--only", default=None, help="only mutants whose key or id contains this")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    ap.add_argument("--json", default="build/mutants.json")
    ap.add_argument("--survivors", default=str(SURVIVORS))
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.design, a.scenarios.split(","), a.arches.split(","), a.preemptions)
        return
    mutants: list[Mutant] = generate()
    if a.only:
        mutants = [m for m in mutants if a.only in m.key or a.only == m.id]
    if a.limit is not None:
        mutants = mutants[: a.limit]
    if a.list:
        for m in mutants:
            print(m.id, m.key)
        return
    classes = load_classes(Path(a.survivors))
    t0 = time.perf_counter()
    if not a.no_baseline:
        base = run_one(BASELINE, a)
        if base["result"] != "survived":
            sys.exit(f"the unmutated design does not pass the scope: {base}")
        print(f"baseline: no finding ({base['seconds']} s)", flush=True)
    print("| id | operator | function | statement | verdict | scenario | arch | invariant |")
    print("|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for m, r in zip(mutants, pool.map(lambda m: run_one(m.key, a), mutants), strict=True):
            cls = classes.get(m.key)
            row = {"id": m.id, "key": m.key, "op": m.op, "module": m.module}
            row |= {"function": m.function, **r, "verdict": verdict(r, cls)}
            if cls is not None and r["result"] == "survived":
                row["reason"] = cls.get("reason", "")
            rows.append(row)
            stmt = m.text if len(m.text) <= 60 else m.text[:57] + "..."
            inv = r.get("invariant")
            print(
                f"| {m.id} | {m.op} | {m.function} | `{stmt}` | {row['verdict']} | "
                f"{r.get('scenario', '')} | {r.get('arch', '')} | {'' if inv is None else inv} |",
                flush=True,
            )
    keys = {m.key for m in mutants}
    stale = sorted(
        k
        for k in classes
        if k not in keys or k in {r["key"] for r in rows if r["verdict"] == "killed"}
    )
    s = summary(rows)
    wall = round(time.perf_counter() - t0, 1)
    print()
    print(
        f"mutants {s['mutants']}, killed {s['killed']}, equivalent {s['equivalent']}, "
        f"gaps {s['gap']}, other {s['other']}; kill rate of the non-equivalent "
        f"{s['kill_rate']}; {wall} s with {a.jobs} jobs"
    )
    for r in rows:
        if r["verdict"] not in ("killed", "equivalent"):
            print(f"  {r['verdict']}: {r['id']} {r['key']}")
    if stale and not (a.only or a.limit):
        print("classified in the survivors file but not surviving now:")
        for k in stale:
            print(f"  {k}")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "design": a.design,
        "arches": a.arches.split(","),
        "scenarios": a.scenarios.split(","),
        "preemptions": a.preemptions,
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    out.write_text(json.dumps({"meta": meta, "summary": s, "mutants": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
