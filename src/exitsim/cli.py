"""exitsim's command line: parse, call the model, format. No model logic here.

Exit status: 0 success; 1 the model found a problem (an invariant or lock rule broke);
2 bad usage or input; 3 a crash inside exitsim (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from exitsim.engine.errors import SimError
from exitsim.machine.arch import ARCHES
from exitsim.machine.costs import CostProfile, CostProfileError, load_profile
from exitsim.machine.machine import GRANULARITIES


class UsageError(Exception):
    """Bad flags or input: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {v})")
    return v


def _cpus(text: str) -> int:
    v = _positive(text)
    if v > 256:
        raise argparse.ArgumentTypeError(f"must be 1..256 (got {v})")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative (got {v})")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="exitsim", description="Simulate and check process-exit VM teardown.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="the engine demo: compute, kernel lock, TLB flushes")
    d.add_argument("-s", "--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--arch", choices=sorted(ARCHES), default="amd64", help="default amd64")
    d.add_argument("--cpus", type=_cpus, default=8, help="CPUs, 1..256 (default 8)")
    d.add_argument("--procs", type=_positive, default=4, help="processes (default 4)")
    d.add_argument("--threads", type=_positive, default=4, help="threads each (default 4)")
    d.add_argument(
        "--iterations", type=_positive, default=200, help="rounds per thread (default 200)"
    )
    d.add_argument(
        "--user-ns",
        type=_nonneg,
        default=20_000,
        help="mean user time per round, ns (default 20000)",
    )
    d.add_argument(
        "--flush-every", type=_positive, default=10, help="a TLB flush every N rounds (default 10)"
    )
    d.add_argument(
        "--granularity", choices=GRANULARITIES, default="exact", help="TLB model (default exact)"
    )
    d.add_argument("--profile", metavar="FILE", help="cost profile TOML (default: built-in)")
    d.add_argument("--json", action="store_true", help="print the record as JSON only")
    d.add_argument("-o", "--output", metavar="FILE", help="also write the JSON record here")
    return p


def write_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename: never half-written."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_profile(path: str | None, arch: str) -> CostProfile | None:
    if path is None:
        return None
    prof = load_profile(path)
    if prof.arch != arch:
        raise UsageError(f"{path}: profile is for {prof.arch}, but --arch is {arch}")
    return prof


def cmd_demo(args: argparse.Namespace) -> int:
    from exitsim.report.table import cpu_table, lock_table, tlb_table
    from exitsim.workloads.demo import DemoConfig, simulate_demo

    try:
        cfg = DemoConfig(
            arch=args.arch,
            cpus=args.cpus,
            procs=args.procs,
            threads=args.threads,
            iterations=args.iterations,
            user_ns=args.user_ns,
            flush_every=args.flush_every,
            granularity=args.granularity,
            seed=args.seed,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.output:
        out_dir = Path(args.output).parent
        if not out_dir.is_dir():
            raise UsageError(f"--output: directory {out_dir} does not exist")
    record = simulate_demo(cfg, _load_profile(args.profile, args.arch))
    text = json.dumps(record, sort_keys=True, indent=2) + "\n"
    if args.output:
        write_atomic(args.output, text)
    if args.json:
        sys.stdout.write(text)
        return 0
    from rich.console import Console

    console = Console(width=max(100, Console().width))
    for key, value in asdict(cfg).items():
        console.print(f"# {key} {value}", highlight=False)
    console.print(cpu_table(record))
    console.print(lock_table(record))
    console.print(tlb_table(record))
    console.print(f"events {record['events']}  ops {record['ops']}", highlight=False)
    return 0


COMMANDS: dict[str, Any] = {"demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("a command is needed: " + ", ".join(sorted(COMMANDS)))
        return int(COMMANDS[args.command](args))
    except (UsageError, CostProfileError) as e:
        if debug:
            traceback.print_exc()
        print(f"exitsim: error: {e}", file=sys.stderr)
        return 2
    except SimError as e:
        if debug:
            traceback.print_exc()
        print(f"exitsim: model error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("exitsim: interrupted", file=sys.stderr)
        return 130
    except Exception:
        print("exitsim: internal error (a bug in exitsim); traceback follows", file=sys.stderr)
        traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main())
