"""The workload file: one TOML format for a generator with parameters or an explicit
process tree, validated before anything runs (docs/workloads.md).

TOML because people write these by hand (comments, no braces to balance) and the cost
profiles and designs already are TOML; ``tomllib`` reads it, ``tomli_w`` writes what
``exitsim trace import`` makes. Validation is pydantic's: every error names the field
path (``process[3].after[0]``) and what was expected.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exitsim.kern.syscall import LOCKED, NOLOCK
from exitsim.machine.machine import DEFAULT_TOTAL_PAGES
from exitsim.workloads.program import (
    DATA_PAGES,
    DATA_VPN,
    HEAP_VPN,
    LIBC_PAGES,
    LIBC_VPN,
    MAX_MS,
    SHM_VPN,
    STACK_PAGES,
    STACK_VPN,
    TEXT_CHUNK,
    TEXT_VPN,
)

FORMAT = 1
#: The name a process tree runs under in a SimConfig.
TREE = "tree"

#: The most calls of one name a process can make (each is simulated, ~10 us apiece).
MAX_CALLS = 100_000_000
#: The most of each kind a replayed process can have resident: what the simulated
#: machine holds (a tree as a whole can still ask for more, and then runs out of
#: memory), and what fits between the fixed addresses of its image (program.py).
MAX_FILE_PAGES = min(
    DEFAULT_TOTAL_PAGES, LIBC_PAGES + (DATA_VPN - TEXT_VPN) // TEXT_CHUNK * TEXT_CHUNK
)
MAX_ANON_PAGES = min(DEFAULT_TOTAL_PAGES, LIBC_VPN - HEAP_VPN + DATA_PAGES + STACK_PAGES)
MAX_SHM_PAGES = min(DEFAULT_TOTAL_PAGES, STACK_VPN - SHM_VPN)

#: A process id: positive, and within TOML's 64-bit integers so a file can be read back.
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]
Ms = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]


class WorkloadFileError(ValueError):
    """A workload file that cannot be used: one line naming the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProcessSpec(_Strict):
    """One process of a tree. Times are milliseconds, sizes 4 KiB pages."""

    id: Id
    parent: Id | None = None
    comm: str | None = None
    program: str | None = None
    start_ms: Ms = 0.0
    after: list[int] = Field(default_factory=list)
    user_ms: Ms = 0.0
    threads: Annotated[int, Field(ge=1, le=1024)] = 1
    anon_pages: Annotated[int, Field(ge=0, le=MAX_ANON_PAGES)] = 0
    file_pages: Annotated[int, Field(ge=0, le=MAX_FILE_PAGES)] = 0
    shm_pages: Annotated[int, Field(ge=0, le=MAX_SHM_PAGES)] = 0
    shm_key: str = ""
    syscalls: dict[str, Annotated[int, Field(ge=0, le=MAX_CALLS)]] = Field(default_factory=dict)
    exit_status: Annotated[int, Field(ge=0, le=255)] = 0

    @model_validator(mode="after")
    def _known_syscalls(self) -> ProcessSpec:
        for name in self.syscalls:
            if name not in LOCKED and name not in NOLOCK:
                known = ", ".join(sorted(LOCKED | NOLOCK))
                raise ValueError(f"syscalls: unknown system call {name!r} (known: {known})")
        return self

    @property
    def name(self) -> str:
        """What ps would show: the comm, else the program's base name."""
        if self.comm:
            return self.comm
        if self.program:
            return self.program.rsplit("/", 1)[-1]
        return f"p{self.id}"


class GeneratorSpec(BaseModel):
    """``[generator]``: a built-in generator by name; the other keys are its
    parameters, checked against that generator's own table."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ReplaySpec(_Strict):
    """``[replay]``: how a process tree is replayed (workloads/tree.py). ``jobs``:
    make's children scheduled again as ``make -j<jobs>``; ``--param jobs=N`` overrides
    it. A table of its own, not a top-level key, so it cannot be read as a
    generator's ``jobs``."""

    jobs: Annotated[int, Field(ge=1)] | None = None


class WorkloadSpec(_Strict):
    """A whole file."""

    format: Literal[1]
    name: str = ""
    description: str = ""
    source: str = ""
    generator: GeneratorSpec | None = None
    replay: ReplaySpec | None = None
    process: list[ProcessSpec] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WorkloadSpec:
        if (self.generator is None) == (self.process is None):
            raise ValueError("give exactly one of [generator] and [[process]]")
        if self.process is not None:
            check_tree(self.process)
        if self.replay is not None and self.replay.jobs is not None:
            if self.process is None:
                raise ValueError("replay: only for a [[process]] tree")
            from exitsim.workloads.tree import check_jobs

            try:
                check_jobs(self.process)
            except ValueError as e:
                raise ValueError(f"replay.{e}") from None
        return self


def check_tree(procs: list[ProcessSpec]) -> None:
    """A tree: ids unique, parents listed before their children, ``after`` naming
    earlier siblings, a root exec'ing a program, a child forked within its parent's
    run time."""
    if not procs:
        raise ValueError("process: the tree is empty")
    seen: dict[int, ProcessSpec] = {}
    for i, p in enumerate(procs):
        where = f"process[{i}]"
        if p.id in seen:
            raise ValueError(f"{where}.id: {p.id} is used twice")
        if p.parent is None:
            if p.program is None:
                raise ValueError(f"{where}.program: a root process must exec a program")
        else:
            parent = seen.get(p.parent)
            if parent is None:
                raise ValueError(
                    f"{where}.parent: {p.parent} is not a process listed before this one"
                )
            if p.start_ms > parent.user_ms + 1e-9:
                raise ValueError(
                    f"{where}.start_ms: {p.start_ms} is past its parent's user_ms {parent.user_ms}"
                )
        for j, a in enumerate(p.after):
            sib = seen.get(a)
            if sib is None or sib.parent != p.parent or p.parent is None:
                raise ValueError(
                    f"{where}.after[{j}]: {a} is not an earlier child of the same parent"
                )
        seen[p.id] = p


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part.startswith("function-"):
            continue  # pydantic's names for validators and unions, not fields
        else:
            out += f".{part}" if out else part
    return out


def validation_message(e: ValidationError) -> str:
    """The first error of ``e`` as ``field.path: what is wrong``."""
    err = e.errors()[0]
    where = _loc(tuple(err["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field missing"
    return f"{where}: {msg}" if where else msg


def parse_workload(data: Mapping[str, Any], origin: str) -> WorkloadSpec:
    """Validate an already-read mapping; errors name ``origin``."""
    try:
        spec = WorkloadSpec.model_validate(dict(data))
    except ValidationError as e:
        raise WorkloadFileError(f"{origin}: {validation_message(e)}") from None
    if spec.generator is not None:
        from exitsim.workloads.registry import WorkloadError, check_params

        try:
            check_params(spec.generator.name, spec.generator.params())
        except WorkloadError as e:
            raise WorkloadFileError(f"{origin}: generator: {e}") from None
    return spec


def read_toml_file(path: str | Path, error: type[Exception]) -> dict[str, Any]:
    """A TOML file's tables, or ``error`` with one line naming the file: unreadable,
    not UTF-8, not TOML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise error(f"{path}: not valid TOML: nested too deeply") from None


def load_workload_file(path: str | Path) -> WorkloadSpec:
    """Read and validate a workload file."""
    return parse_workload(read_toml_file(path, WorkloadFileError), str(path))


def to_config(spec: WorkloadSpec) -> tuple[str, dict[str, Any]]:
    """The (workload, workload_params) pair a SimConfig carries for ``spec``: a
    generator's name and parameters, or the tree itself, so a Result holds all it
    needs to be run again."""
    if spec.generator is not None:
        return spec.generator.name, spec.generator.params()
    assert spec.process is not None
    params: dict[str, Any] = {
        "name": spec.name,
        "process": [p.model_dump(exclude_defaults=True) for p in spec.process],
    }
    if spec.replay is not None and spec.replay.jobs is not None:
        params["jobs"] = spec.replay.jobs
    return TREE, params


def dump_workload(spec: WorkloadSpec) -> str:
    """``spec`` as TOML text, defaults left out."""
    import tomli_w

    data = spec.model_dump(exclude_defaults=True)
    data["format"] = FORMAT
    head = {k: data.pop(k) for k in ("format", "name", "description", "source") if k in data}
    return tomli_w.dumps(head | data)
