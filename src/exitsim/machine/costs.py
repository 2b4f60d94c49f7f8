"""Cost profiles: one TOML file per arch, every number with its source.

A profile file looks like::

    [profile]
    arch = "amd64"
    description = "..."

    [costs.ctxsw_ns]
    value = 2000
    source = "assumption: ..."

Each key under ``[costs]`` must be one of ``COST_KEYS``, all of them must be there, each
value a non-negative integer (nanoseconds unless the key says otherwise) and each
``source`` a non-empty string: a row of cost-anchors.md, "measured here by <command>",
or "assumption: <why>". Anything else is refused with one line naming the file and key.
"""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

#: Every cost a profile must give, with what it means.
COST_KEYS: dict[str, str] = {
    "quantum_ns": "round-robin time slice before a waiting thread may preempt user code",
    "ctxsw_ns": "one context switch to a different thread",
    "lock_handoff_ns": (
        "a spinning waiter sees a released lock: one cache-line transfer between CPUs"
    ),
    "ipi_send_ns": "sender's cost per target of an inter-processor interrupt",
    "ipi_latency_ns": "from sending an IPI to its handler starting on the target",
    "ipi_handler_ns": "target's time in a TLB-shootdown interrupt handler, ack included",
    "tlb_local_page_ns": "invalidate one page in the local TLB (invlpg)",
    "tlb_local_flush_ns": "flush the local TLB of one address space or all of it",
    "tlbi_ns": "one broadcast TLB invalidation (tlbi ...is + dsb ish) with one sender",
    "tlbi_per_sender_ns": "extra per broadcast for each other CPU broadcasting meanwhile",
    "tlbi_receiver_ns": "each other running CPU's stall per broadcast invalidation it receives",
    "kernel_lock_section_ns": "a short kernel-locked section of a syscall (demo workload)",
    "page_alloc_ns": (
        "take one page out of the pmemrange trees (under the free-page lock); a per-CPU "
        "magazine refill takes 8"
    ),
    "page_free_ns": (
        "per page of a free into the pmemrange trees (under the free-page lock): the list "
        "walk that cuts it into contiguous ranges"
    ),
    "pmr_insert_ns": (
        "one tree level of inserting a free range into the pmemrange RB trees (by address "
        "and by size); charged ceil(log2(ranges + 1)) times per range inserted"
    ),
    "pageq_ns": "put one page on or take it off a page queue (under the page-queue lock)",
    "pcpu_cache_ns": "take one page from or give one to the per-CPU page magazines (no lock)",
    "pte_ns": "set or clear one PTE with its pv entry and counters",
    "pmap_lookup_ns": "look up one virtual page in arm64 pmap_remove's walk of a range",
    "ptp_scan_ns": "check one 2 MB block's page-directory entry in amd64 pmap_do_remove",
    "page_zero_ns": "zero one 4 KiB page (zero-fill fault)",
    "page_copy_ns": "copy one 4 KiB page (copy-on-write fault)",
    "fault_ns": "one page fault's trap and lookups, besides its page work",
    "map_entry_ns": "create, kill or free one vm_map_entry",
    "amap_slot_ns": "touch one amap slot (reference count, bitmap)",
    "pmap_create_ns": "create a pmap with its root table",
    "pmap_destroy_ns": "free a pmap's structure and root table",
    "vmspace_ns": "allocate or free a vmspace and set up or drop its map",
    "syscall_ns": "system call entry and return, besides the call's body",
    "namei_ns": "one path lookup through the name cache (a short path, all of it cached)",
    "open_ns": "open's own work besides its lookup: the file, the vnode open, the descriptor",
    "stat_ns": "stat's own work besides its lookup: a vnode's attributes copied out",
    "access_ns": "access's own work besides its lookup: the permission check",
    "readlink_ns": "readlink's own work besides its lookup",
    "getdents_ns": "one getdents of a small directory on an open descriptor",
    "read_ns": "a read of 4 KiB of cached data (no kernel lock)",
    "write_ns": "a write that copies little, to a device or a pipe (no kernel lock)",
    "close_ns": "a close of the last reference to a file (no kernel lock)",
    "fork_ns": "fork1's own work besides the address space (process, files, creds)",
    "exec_ns": "execve's own work besides the address space (namei, headers, args)",
    "fdfree_file_ns": "exit1 fdfree: close one open file (closef), per file held at exit",
    "itimer_ns": "exit1 cancel_all_itimers and the timeout_del of ps_rucheck_to",
    "semexit_ns": "exit1 semexit for a process with SysV semaphore undo (SEM_UNDO) entries",
    "killjobc_ns": "exit1 killjobc: the job-control checks of the process group",
    "acct_ns": "exit1 acct_process: write one accounting record (accounting on only)",
    "unveil_ns": "exit1 unveil_destroy: drop one unveiled path (vrele, names freed)",
    "exit_lists_ns": "exit1 steps 8-9: tid/pid hashes, allprocess, zombprocess, reparenting",
    "uarea_ns": "allocate or free a thread's u-area (kernel stack and pcb)",
    "proc_ns": "allocate or free a struct proc / struct process",
    "wait_ns": "one pass of dowait6 over the children, and process_zap",
}


class CostProfileError(ValueError):
    """A profile is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Costs:
    """The numbers of one profile. Field order follows ``COST_KEYS``."""

    quantum_ns: int
    ctxsw_ns: int
    lock_handoff_ns: int
    ipi_send_ns: int
    ipi_latency_ns: int
    ipi_handler_ns: int
    tlb_local_page_ns: int
    tlb_local_flush_ns: int
    tlbi_ns: int
    tlbi_per_sender_ns: int
    tlbi_receiver_ns: int
    kernel_lock_section_ns: int
    page_alloc_ns: int
    page_free_ns: int
    pmr_insert_ns: int
    pageq_ns: int
    pcpu_cache_ns: int
    pte_ns: int
    pmap_lookup_ns: int
    ptp_scan_ns: int
    page_zero_ns: int
    page_copy_ns: int
    fault_ns: int
    map_entry_ns: int
    amap_slot_ns: int
    pmap_create_ns: int
    pmap_destroy_ns: int
    vmspace_ns: int
    syscall_ns: int
    namei_ns: int
    open_ns: int
    stat_ns: int
    access_ns: int
    readlink_ns: int
    getdents_ns: int
    read_ns: int
    write_ns: int
    close_ns: int
    fork_ns: int
    exec_ns: int
    fdfree_file_ns: int
    itimer_ns: int
    semexit_ns: int
    killjobc_ns: int
    acct_ns: int
    unveil_ns: int
    exit_lists_ns: int
    uarea_ns: int
    proc_ns: int
    wait_ns: int


@dataclass(frozen=True, slots=True)
class CostProfile:
    """A loaded profile: its arch, its costs and where each number comes from."""

    arch: str
    description: str
    costs: Costs
    sources: dict[str, str]
    path: str


def source_kind(source: str) -> str:
    """What backs a number: ``assumption`` (its source says so), ``measured`` (measured
    here by a command), ``fitted`` (fitted by exitsim fit to published figures) or
    ``sourced`` (a cost-anchors row, an OpenBSD file, ...)."""
    s = source.lstrip().lower()
    if s.startswith("assumption"):
        return "assumption"
    if s.startswith("measured"):
        return "measured"
    if s.startswith("fitted"):
        return "fitted"
    return "sourced"


def describe_profile(profile: CostProfile) -> dict[str, Any]:
    """A profile as plain data: every value, in ``COST_KEYS`` order, with its unit,
    meaning, source and kind, and how many of them are assumptions."""
    costs = {
        key: {
            "value": getattr(profile.costs, key),
            # Every key is in nanoseconds unless its name says otherwise (module doc).
            "unit": "ns" if key.endswith("_ns") else "count",
            "meaning": meaning,
            "source": profile.sources[key],
            "kind": source_kind(profile.sources[key]),
        }
        for key, meaning in COST_KEYS.items()
    }
    return {
        "arch": profile.arch,
        "description": profile.description,
        "path": profile.path,
        "assumptions": assumption_count(profile),
        "costs": costs,
    }


def load_profile(path: str | Path) -> CostProfile:
    """Read and check a profile file. Raises ``CostProfileError`` with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CostProfileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CostProfileError(f"{path}: not UTF-8 text") from None
    return parse_profile(text, str(path))


def _check_value(where: str, key: str, v: object) -> None:
    """A cost value is a non-negative integer; the quantum is positive. ``where``
    starts the one-line message."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise CostProfileError(f"{where} must be an integer (got {v!r})")
    if v < 0:
        raise CostProfileError(f"{where} must not be negative (got {v})")
    if key == "quantum_ns" and v == 0:
        raise CostProfileError(f"{where} must be positive")


def parse_profile(text: str, name: str) -> CostProfile:
    """Check a profile given as TOML text; ``name`` is used in messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CostProfileError(f"{name}: not valid TOML: {e}") from None
    for top in doc:
        if top not in ("profile", "costs"):
            raise CostProfileError(f"{name}: unknown table [{top}]")
    prof = doc.get("profile")
    if not isinstance(prof, dict) or not isinstance(prof.get("arch"), str):
        raise CostProfileError(f'{name}: [profile] needs arch = "..."')
    for k in prof:
        if k not in ("arch", "description"):
            raise CostProfileError(f"{name}: unknown key profile.{k}")
    costs = doc.get("costs")
    if not isinstance(costs, dict):
        raise CostProfileError(f"{name}: missing [costs] table")
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    for key, entry in costs.items():
        if key not in COST_KEYS:
            raise CostProfileError(f"{name}: unknown cost key costs.{key}")
        if not isinstance(entry, dict):
            raise CostProfileError(f"{name}: costs.{key} must be a table with value and source")
        for k in entry:
            if k not in ("value", "source"):
                raise CostProfileError(f"{name}: unknown key costs.{key}.{k}")
        v = entry.get("value")
        _check_value(f"{name}: costs.{key}.value", key, v)
        src = entry.get("source")
        if not isinstance(src, str) or not src.strip():
            raise CostProfileError(f"{name}: costs.{key}.source must say where {key} comes from")
        values[key] = v
        sources[key] = src.strip()
    missing = [k for k in COST_KEYS if k not in values]
    if missing:
        raise CostProfileError(f"{name}: missing cost key costs.{missing[0]}")
    return CostProfile(
        arch=prof["arch"],
        description=str(prof.get("description", "")),
        costs=Costs(**values),
        sources=sources,
        path=name,
    )


@functools.cache
def builtin_profile(arch: str) -> CostProfile:
    """The profile shipped for ``arch`` (``machine/profiles/<arch>.toml``), read once."""
    ref = resources.files("exitsim.machine").joinpath("profiles", f"{arch}.toml")
    if not ref.is_file():
        raise CostProfileError(f"no built-in cost profile for arch {arch!r}")
    return parse_profile(ref.read_text(encoding="utf-8"), f"profiles/{arch}.toml")


def profile_digest(profile: CostProfile) -> str:
    """A short hash of a profile's values (not its sources): two profiles with the
    same digest cost every step the same."""
    import hashlib

    text = "".join(f"{k}={getattr(profile.costs, k)}\n" for k in COST_KEYS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[str, int]:
    """``KEY=VALUE`` (``--cost``): a cost key and a non-negative whole number of its
    unit; CostProfileError in one line otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CostProfileError(f"--cost {text!r}: give KEY=VALUE, e.g. tlbi_ns=700")
    if key not in COST_KEYS:
        raise CostProfileError(f"--cost {text!r}: unknown cost key {key!r} (exitsim costs)")
    try:
        v = int(value.replace("_", ""))
    except ValueError:
        raise CostProfileError(f"--cost {text!r}: {value!r} is not a whole number") from None
    if v < 0:
        raise CostProfileError(f"--cost {text!r}: must not be negative")
    return key, v


def with_overrides(profile: CostProfile, overrides: Mapping[str, int]) -> CostProfile:
    """``profile`` with some values replaced; each replaced source says so. For
    sensitivity runs: a claim is checked at several values of an assumed cost."""
    sources = dict(profile.sources)
    for key, v in overrides.items():
        if key not in COST_KEYS:
            raise CostProfileError(f"cost override: unknown cost key {key!r}")
        _check_value(f"cost override: {key}", key, v)
        was = getattr(profile.costs, key)
        sources[key] = f"override: {v} (profile value {was}: {sources[key]})"
    return replace(profile, costs=replace(profile.costs, **overrides), sources=sources)


def resolve_profile(
    arch: str, path: str | None = None, overrides: Mapping[str, int] | None = None
) -> CostProfile:
    """The costs a run of ``arch`` uses: the profile file at ``path`` (or the arch's
    built-in one), with ``overrides``. CostProfileError for a bad file, a profile for
    another arch, or a bad override."""
    prof = load_profile(path) if path is not None else builtin_profile(arch)
    if prof.arch != arch:
        raise CostProfileError(f"{prof.path}: profile is for {prof.arch}, not {arch}")
    return with_overrides(prof, overrides) if overrides else prof


def costs_record(base: CostProfile, overrides: Mapping[str, int]) -> dict[str, Any]:
    """Which costs a run used, as its Result records them (``costs``): the profile's
    name, a digest of its values (before ``overrides``), every override."""
    return {
        "profile": base.path,
        "digest": profile_digest(base),
        "overrides": dict(sorted(overrides.items())),
    }


def toml_str(s: str) -> str:
    """``s`` as a TOML basic string, for the writers of profile files (JSON's escapes
    are TOML's)."""
    return json.dumps(s, ensure_ascii=False)


def assumption_count(profile: CostProfile) -> int:
    """How many of a profile's values its sources mark as assumptions."""
    return sum(source_kind(src) == "assumption" for src in profile.sources.values())


class _Recording(Costs):
    """Costs that add the name of every key read to ``_seen``."""

    def __getattribute__(self, name: str) -> Any:
        if name in COST_KEYS:
            object.__getattribute__(self, "_seen").add(name)
        return super().__getattribute__(name)


def recording(profile: CostProfile, seen: set[str]) -> CostProfile:
    """``profile`` with costs that note in ``seen`` every key the model reads: a key
    a run never reads cannot change its Result (``exitsim sensitivity`` skips it)."""
    rec = _Recording(**{k: getattr(profile.costs, k) for k in COST_KEYS})
    object.__setattr__(rec, "_seen", seen)
    return replace(profile, costs=rec)
