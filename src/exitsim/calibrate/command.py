"""``exitsim calibrate`` as a function: check the options, measure (or read saved
measurements), fit the ``linux-host`` profile or take the one to check, and set the
model beside the host. Returns what the command line prints and writes; prints and
writes nothing itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from exitsim.calibrate import hostrun
from exitsim.calibrate.hostcheck import Row, check_doc, check_rows, targets_met
from exitsim.calibrate.hostprofile import NAME, FitError, profile_toml
from exitsim.calibrate.measured import MeasurementError, Measurements, describe_figure, read
from exitsim.machine.costs import CostProfile, load_profile, parse_profile

#: The format of the ``--json`` document.
JSON_FORMAT = 1


class CalibrateError(ValueError):
    """A bad option or input, or a host the benchmarks cannot run on: one line."""


@dataclass(frozen=True, slots=True)
class Options:
    """The command's options, checked (``options``)."""

    output: str
    repeats: int
    mib: tuple[int, ...]
    check: str | None
    measurements: str | None
    json: str | None


def parse_mib(text: str) -> tuple[int, ...]:
    """``--mib``: whole MiB from 0 to ``MAX_MIB``, each once, at least two, one above 0;
    returned in increasing order."""
    parts = [x.strip() for x in text.split(",")]
    sizes: list[int] = []
    for x in parts:
        try:
            m = int(x)
        except ValueError:
            raise CalibrateError(f"--mib: {x!r} is not a whole number of MiB") from None
        if not 0 <= m <= hostrun.MAX_MIB:
            raise CalibrateError(f"--mib: {m} must be from 0 to {hostrun.MAX_MIB}")
        if m in sizes:
            raise CalibrateError(f"--mib: {m} is given twice")
        sizes.append(m)
    if len(sizes) < 2 or max(sizes) == 0:
        raise CalibrateError(
            f"--mib: give at least two sizes, one above 0, for a slope (got {text!r})"
        )
    return tuple(sorted(sizes))


def options(
    output: str | None,
    repeats: int | None,
    mib: str | None,
    quick: bool,
    check: str | None,
    measurements: str | None,
    json_path: str | None,
) -> Options:
    """The options with their defaults, or CalibrateError naming the bad one."""
    if check is not None and output is not None:
        raise CalibrateError("-o: --check compares a profile with the host; it writes none")
    if measurements is not None:
        for flag, given in (("--repeats", repeats), ("--mib", mib), ("--quick", quick or None)):
            if given is not None:
                raise CalibrateError(f"{flag}: not with --measurements (its samples are used)")
    outs = [p for p in (output, json_path) if p is not None and p != "-"]
    if len(outs) == 2 and outs[0] == outs[1]:
        raise CalibrateError(f"--json: {json_path} is also the profile's output (-o)")
    if json_path == "-" and (output in (None, "-")) and check is None:
        raise CalibrateError("--json -: standard output already carries the profile (-o)")
    sizes = (
        parse_mib(mib) if mib is not None else (hostrun.QUICK_MIB if quick else hostrun.DEFAULT_MIB)
    )
    n = (
        repeats
        if repeats is not None
        else (hostrun.QUICK_REPEATS if quick else hostrun.DEFAULT_REPEATS)
    )
    return Options(output or "-", n, sizes, check, measurements, json_path)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run found and what it writes: the profile text (None with ``--check``),
    the profile compared, the rows, the JSON document."""

    meas: Measurements
    profile_text: str | None
    profile: CostProfile
    rows: list[Row]
    json_text: str

    @property
    def targets_met(self) -> bool:
        return targets_met(self.rows)


def get_measurements(opts: Options) -> Measurements:
    """Saved measurements (``--measurements``), or a run of the host benchmarks."""
    try:
        if opts.measurements is not None:
            return read(opts.measurements)
        return hostrun.measure(opts.repeats, opts.mib)
    except (MeasurementError, hostrun.HostRunError) as e:
        raise CalibrateError(str(e)) from None


def compare(opts: Options, meas: Measurements) -> Outcome:
    """Fit the profile (or load ``--check``'s) and run the model beside the host."""
    if opts.check is not None:
        prof = load_profile(opts.check)
        text = None
    else:
        try:
            text = profile_toml(meas)
        except FitError as e:
            raise CalibrateError(str(e)) from None
        name = f"{NAME}.toml" if opts.output == "-" else opts.output
        prof = parse_profile(text, name)
    rows = check_rows(meas, prof)
    doc: dict[str, Any] = {
        "format": JSON_FORMAT,
        "host": meas.doc,
        "figures": {name: f.as_dict() | _what(name) for name, f in meas.figures.items()},
        "model": check_doc(meas, prof, rows=rows),
    }
    return Outcome(meas, text, prof, rows, dump_json(doc) + "\n")


def _what(name: str) -> dict[str, str]:
    unit, what = describe_figure(name)
    return {"unit": unit, "what": what}


def dump_json(obj: Any, indent: str = "") -> str:
    """JSON with sorted keys, one member a line, but a list of numbers or strings on
    one line: the samples (a column of 101 numbers) stay readable and small."""
    inner = indent + " "
    if isinstance(obj, dict) and obj:
        members = [f"{inner}{json.dumps(k)}: {dump_json(obj[k], inner)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(members) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(x, dict | list) for x in obj):
        items = [f"{inner}{dump_json(x, inner)}" for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=False)
