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
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: Every cost a profile must give, with what it means.
COST_KEYS: dict[str, str] = {
    "quantum_ns": "round-robin time slice before a waiting thread may preempt user code",
    "ctxsw_ns": "one context switch to a different thread",
    "ipi_send_ns": "sender's cost per target of an inter-processor interrupt",
    "ipi_latency_ns": "from sending an IPI to its handler starting on the target",
    "ipi_handler_ns": "target's time in a TLB-shootdown interrupt handler, ack included",
    "tlb_local_page_ns": "invalidate one page in the local TLB (invlpg)",
    "tlb_local_flush_ns": "flush the local TLB of one address space or all of it",
    "tlbi_ns": "one broadcast TLB invalidation (tlbi ...is + dsb ish) with one sender",
    "tlbi_per_sender_ns": "extra per broadcast for each other CPU broadcasting meanwhile",
    "kernel_lock_section_ns": "a short kernel-locked section of a syscall (demo workload)",
    "page_alloc_ns": "take one page off the free lists (under the free-page lock)",
    "page_free_ns": "put one page back on the free lists (under the free-page lock)",
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
    "fs_syscall_ns": "body of a kernel-locked file-system call (open, stat: namei)",
    "io_syscall_ns": "body of an unlocked I/O call on cached data (read, write, close)",
    "fork_ns": "fork1's own work besides the address space (process, files, creds)",
    "exec_ns": "execve's own work besides the address space (namei, headers, args)",
    "exit_ns": "exit1's own work besides the address space (files, timers, lists)",
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
    ipi_send_ns: int
    ipi_latency_ns: int
    ipi_handler_ns: int
    tlb_local_page_ns: int
    tlb_local_flush_ns: int
    tlbi_ns: int
    tlbi_per_sender_ns: int
    kernel_lock_section_ns: int
    page_alloc_ns: int
    page_free_ns: int
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
    fs_syscall_ns: int
    io_syscall_ns: int
    fork_ns: int
    exec_ns: int
    exit_ns: int
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
        if isinstance(v, bool) or not isinstance(v, int):
            raise CostProfileError(f"{name}: costs.{key}.value must be an integer (got {v!r})")
        if v < 0:
            raise CostProfileError(f"{name}: costs.{key}.value must not be negative (got {v})")
        src = entry.get("source")
        if not isinstance(src, str) or not src.strip():
            raise CostProfileError(f"{name}: costs.{key}.source must say where {key} comes from")
        values[key] = v
        sources[key] = src.strip()
    missing = [k for k in COST_KEYS if k not in values]
    if missing:
        raise CostProfileError(f"{name}: missing cost key costs.{missing[0]}")
    if values["quantum_ns"] == 0:
        raise CostProfileError(f"{name}: costs.quantum_ns.value must be positive")
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
