"""Read a result file: what ``exitsim run -o`` writes (one Result) or what ``exitsim
compare -o`` writes (a list of them). Anything else is refused with one line that says
what is wrong, so reports are never made from half a result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exitsim.report.result import SCHEMA_VERSION


class ResultFileError(Exception):
    """The file is missing, not JSON, or not an exitsim result of this schema."""


_NUM = (int, float)
_JSON_NAMES = {dict: "object", list: "array", int: "integer", str: "string"}

#: What a report reads from each Result: the field and the JSON type it must have.
_FIELDS: tuple[tuple[str, type], ...] = (
    ("config", dict),
    ("makespan_ns", int),
    ("cpu", dict),
    ("cpus", list),
    ("processes", dict),
    ("locks", dict),
    ("tlb", dict),
    ("memory", dict),
    ("reaper", dict),
    ("series", dict),
    ("per_process", list),
)
_PROCESSES = ("count", "charged_sys_ns_mean", "exit_latency_ns_p50", "exit_latency_ns_p99")
_CPU = ("user_ns", "sys_ns", "spin_ns", "idle_ns")
_LOCK = ("acquisitions", "contended", "wait_ns", "max_wait_ns", "hold_ns", "max_hold_ns")
_MEMORY = ("held_after_exit_peak_bytes", "held_after_exit_integral_byte_ns")


def _is(v: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(v, kind) and not isinstance(v, bool)  # JSON true is not a number


def _need(obj: Any, keys: tuple[str, ...], where: str, kind: Any = _NUM) -> None:
    """Each of ``keys`` in the object ``obj``, of JSON type ``kind`` (numbers by
    default)."""
    if not isinstance(obj, dict):
        raise ResultFileError(f"{where} is not a JSON object")
    for k in keys:
        if k not in obj:
            raise ResultFileError(f"{where} has no {k}")
        if not _is(obj[k], kind):
            what = "a number" if kind == _NUM else f"a JSON {_JSON_NAMES[kind]}"
            raise ResultFileError(f"{where}: {k} is not {what}")


def _maybe(obj: dict[str, Any], keys: tuple[str, ...], where: str, kind: type) -> None:
    """Each of ``keys`` that ``obj`` has (and is not null), of JSON type ``kind``."""
    _need(obj, tuple(k for k in keys if obj.get(k) is not None), where, kind)


def check_result(r: Any, where: str = "the result") -> None:
    """Refuse ``r`` unless it is a Result of this schema with what a report reads."""
    if not isinstance(r, dict) or "schema" not in r or "config" not in r:
        raise ResultFileError(f"{where} is not from exitsim run or compare (no schema and config)")
    if r["schema"] != SCHEMA_VERSION:
        raise ResultFileError(
            f"{where} has schema {r['schema']!r}; this exitsim reads schema {SCHEMA_VERSION}"
        )
    for name, kind in _FIELDS:
        _need(r, (name,), where, kind)
    cfg = r["config"]
    _need(cfg, ("policy", "arch", "workload", "granularity"), f"{where}'s config", str)
    _need(cfg, ("cpus", "seed"), f"{where}'s config", int)
    _maybe(cfg, ("policy_file",), f"{where}'s config", str)
    _maybe(cfg, ("workload_params",), f"{where}'s config", dict)
    if "process" in (cfg.get("workload_params") or {}):
        _need(cfg["workload_params"], ("process",), f"{where}'s workload_params", list)
    _maybe(r, ("known_violations", "threads", "zombies"), where, dict)
    _need(r["processes"], _PROCESSES, f"{where}'s processes")
    _need(r["cpu"], _CPU, f"{where}'s cpu")
    _need(r["memory"], _MEMORY, f"{where}'s memory")
    _need(r["tlb"], ("broadcasts", "ipis"), f"{where}'s tlb")
    _need(r["reaper"], ("busy_ns", "backlog_peak"), f"{where}'s reaper")
    _need(r["locks"], ("kernel_lock",), f"{where}'s locks", dict)
    for name, stats in r["locks"].items():
        _need(stats, _LOCK, f"{where}'s lock {name}")
    for i, c in enumerate(r["cpus"]):
        _need(c, ("cpu", "switches", *_CPU), f"{where}'s cpus[{i}]")
    for i, p in enumerate(r["per_process"]):
        _need(p, ("pid", "sys_ns", "user_ns"), f"{where}'s per_process[{i}]")
        _need(p, ("comm",), f"{where}'s per_process[{i}]", str)
    for name in ("reaper_backlog", "held_after_exit_pages", "zombies"):
        _need(r["series"], (name,), f"{where}'s series", list)
        for sample in r["series"][name]:
            if not (
                isinstance(sample, list) and len(sample) == 2 and all(_is(x, _NUM) for x in sample)
            ):
                raise ResultFileError(
                    f"{where}'s series {name} has a sample that is not [time_ns, value]"
                )


def load_results(path: str) -> dict[str, Any] | list[dict[str, Any]]:
    """The Result (a dict, from ``run -o``) or Results (a list, from ``compare -o``) in
    ``path``; ResultFileError names the file and what is wrong with it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ResultFileError(f"{path}: is a directory, not a result file") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path}: not JSON (not UTF-8 text)") from None
    except OSError as e:
        raise ResultFileError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ResultFileError(f"{path}: not a result file (nested too deeply)") from None
    try:
        if isinstance(data, list):
            if not data:
                raise ResultFileError("the list of results is empty")
            for i, r in enumerate(data):
                check_result(r, f"result {i}")
        else:
            check_result(data)
    except ResultFileError as e:
        raise ResultFileError(f"{path}: {e}") from None
    return data
