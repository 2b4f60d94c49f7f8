"""Mechanical mutants of the committed design, for a mutation campaign of the checker
(``bench/mutants.py``).

A mutant is one small, named edit of the source of a policy hook or of a kernel/VM
function on the exit path: a lock taken no more (alone, or with the release it pairs
with), two adjacent steps in the other order, a TLB flush or shootdown skipped, a wait
skipped, a release done twice. Each is keyed by the module, the function's qualified
name, the operator and the text of the statement(s) it touches (with an occurrence
number among statements of the same text in that function), never by a line number, so
a key still names the same edit after unrelated edits to the file.

A mutant never touches the tree: ``mutated`` imports the whole ``exitsim`` package
afresh with the one module's source edited in memory (a meta-path finder), so every
``from module import name`` elsewhere sees the mutated function, and puts the real
modules back afterwards. ``bench/mutants.py`` runs each mutant in its own process.

What is not mutated, and why: statements that only check (``uvm.check``, ``kassert``,
``KERNEL_ASSERT_LOCKED``, ``k.violation``, ``k.fail``: the checker's own probes) or only
meter (``k.meters``, ``uvm.counters``, ``start = k.now``: they time a run and cannot
change an ordering); assertions; and a swap of two statements where one sets a local
name the other reads (that breaks the data flow, not the order of two steps).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: The exitsim package directory (the tree this module was imported from).
PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: What is mutated: the committed design's hooks (``purge+pmap_purge`` inherits its
#: ``exit1_teardown`` from ``Purge``; the reaper's ``uvm_exit`` is the base default),
#: and the kernel and VM functions they run on the way.
TARGETS: dict[str, tuple[str, ...]] = {
    "exitsim.policies.purge": ("Purge.exit1_teardown",),
    "exitsim.policies.base": ("Policy.reaper_uvm_exit",),
    "exitsim.kern.exit": (
        "sys_exit",
        "uvm_purge_checked",
        "exit1",
        "sched_exit",
        "reaper",
        "sys_wait4",
        "dowait6",
        "proc_finish_wait",
        "process_zap",
    ),
    "exitsim.kern.sig": (
        "userret",
        "postsig",
        "sigexit",
        "trapsignal",
        "proc_suspend_check_locked",
        "process_suspend_signal",
        "single_thread_set",
    ),
    "exitsim.vm.vmspace": ("uvmspace_purge", "uvm_purge", "uvmspace_free", "uvm_exit"),
    "exitsim.vm.map": ("uvm_unmap_kill_entry", "uvm_unmap_detach", "uvm_map_teardown"),
    "exitsim.vm.pmap": (
        "pmap_destroy",
        "pmap_deactivate",
        "pmap_remove",
        "_pmap_remove_arm64",
        "_pmap_remove_amd64",
        "pmap_purge",
    ),
}

#: Scenarios with sibling threads, where every committed design meets the exit window
#: (invariant 8, docs/checking.md "Findings in the C"): the campaign allows it there, so
#: that a mutant is killed by its own breakage, not by the window the original has too.
THREADED = frozenset({"threads2", "threads3", "exitrace", "killed", "segv", "threxit"})
EXIT_WINDOW_ALLOWED = frozenset({8})

#: The operators, in the order they are generated.
OPERATORS = ("drop-lock", "drop-lock-pair", "swap", "drop-flush", "drop-wait", "double-release")

_ACQUIRE = {
    "KERNEL_LOCK",
    "mtx_enter",
    "vm_map_lock",
    "vm_map_lock_read",
    "rw_enter_write",
    "rw_enter_read",
    "Acquire",
    "__mp_acquire_count",
}
_RELEASE = {
    "KERNEL_UNLOCK",
    "mtx_leave",
    "vm_map_unlock",
    "vm_map_unlock_read",
    "rw_exit",
    "Release",
    "__mp_release_all",
    "mp_release_all",
}
_KERNEL_LOCK_CALLS = {"KERNEL_LOCK", "KERNEL_UNLOCK", "__mp_release_all", "mp_release_all"}
_WAIT = {"msleep", "tsleep", "SpinWait"}
_CHECKS = {
    "check",
    "kassert",
    "violation",
    "fail",
    "KERNEL_ASSERT_LOCKED",
    "KERNEL_ASSERT_UNLOCKED",
}
_SIMPLE_ENDS = (
    ast.Return,
    ast.Raise,
    ast.Pass,
    ast.Break,
    ast.Continue,
    ast.Import,
    ast.ImportFrom,
)


@dataclass(frozen=True, slots=True)
class Mutant:
    """One edit: ``op`` on the ``occ``-th statement of text ``text`` in ``function``
    of ``module``; ``text2`` is the other statement of a swap or a pair."""

    module: str
    function: str
    op: str
    text: str
    occ: int = 0
    text2: str = ""

    @property
    def key(self) -> str:
        """The stable name: no line numbers, only function and statement text."""
        tail = f" | {self.text2}" if self.text2 else ""
        return f"{self.op} {self.module}:{self.function} {self.text}#{self.occ}{tail}"

    @property
    def id(self) -> str:
        """A short id for tables: a hash of the key."""
        return hashlib.blake2b(self.key.encode(), digest_size=4).hexdigest()

    @property
    def path(self) -> Path:
        return module_path(self.module)

    def apply(self, source: str) -> str:
        """The module's source with this edit made; ``MutantError`` if it no longer
        finds the statement(s)."""
        return _apply(self, source)

    def patch(self) -> str:
        """The edit as a unified diff against the file as it is now."""
        src = self.path.read_text()
        rel = self.path.relative_to(PACKAGE_DIR.parent.parent)
        return "".join(
            difflib.unified_diff(
                src.splitlines(keepends=True),
                self.apply(src).splitlines(keepends=True),
                f"a/{rel}",
                f"b/{rel}",
            )
        )


class MutantError(ValueError):
    """A key that names no statement of the current source."""


def module_path(module: str) -> Path:
    """Where a module of the package lives, without importing it."""
    parts = module.split(".")
    assert parts[0] == "exitsim", module
    return PACKAGE_DIR.joinpath(*parts[1:]).with_suffix(".py")


# -- reading statements -------------------------------------------------------------------


def stmt_text(s: ast.stmt) -> str:
    """A statement's text for keys: a simple statement in full, a compound one by its
    header and first body statement, whitespace normalised."""
    if isinstance(s, ast.If | ast.While | ast.For):
        head = ast.unparse(s).splitlines()[0]
        first = " ".join(ast.unparse(s.body[0]).split()) if s.body else ""
        return f"{head} {first}"
    return " ".join(ast.unparse(s).split())


def _call_of(s: ast.stmt) -> ast.Call | None:
    """The call a simple statement makes: ``f(...)``, ``yield f(...)``, ``yield from
    f(...)``, possibly assigned."""
    v: ast.expr | None
    if isinstance(s, ast.Expr | ast.Assign | ast.AnnAssign):
        v = s.value
    else:
        return None
    if isinstance(v, ast.Yield | ast.YieldFrom | ast.Await):
        v = v.value
    return v if isinstance(v, ast.Call) else None


def call_name(s: ast.stmt) -> str:
    c = _call_of(s)
    if c is None:
        return ""
    f = c.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return ""


def _lock_of(s: ast.stmt) -> str:
    """Which lock a lock statement takes or drops, as text, so that an acquire finds
    its release."""
    c = _call_of(s)
    name = call_name(s)
    if c is None or not c.args:
        return ""
    if name in _KERNEL_LOCK_CALLS or ast.unparse(c.args[0]).endswith("kernel_lock"):
        return "kernel_lock"
    if name in ("vm_map_lock", "vm_map_lock_read"):
        return ast.unparse(c.args[-1])
    return ast.unparse(c.args[0])


def is_acquire(s: ast.stmt) -> bool:
    return call_name(s) in _ACQUIRE


def is_release(s: ast.stmt) -> bool:
    return call_name(s) in _RELEASE


def is_flush(s: ast.stmt) -> bool:
    """A TLB flush or shootdown, or arm64's ``pmap_purge`` (which flushes)."""
    n = call_name(s)
    return "flush" in n or "shoot" in n or n == "pmap_purge"


def is_wait(s: ast.stmt) -> bool:
    """A sleep or spin-wait, or a loop that only waits (dropping it skips the wait)."""
    if isinstance(s, ast.While):
        return bool(s.body) and all(is_wait(b) for b in s.body) and not s.orelse
    return call_name(s) in _WAIT


def ignored(s: ast.stmt) -> bool:
    """Checks, meters and assertions are not the design (the module docstring)."""
    if isinstance(s, ast.Assert) or call_name(s) in _CHECKS:
        return True
    text = ast.unparse(s)
    if isinstance(s, ast.If | ast.While | ast.For):
        if all(ignored(b) for b in s.body) and not s.orelse:
            return True
        text = ast.unparse(s.test if not isinstance(s, ast.For) else s.iter)
    if "meters" in text or "counters" in text:
        return True
    return isinstance(s, ast.Assign) and ast.unparse(s.value) == "k.now"


def _is_step(s: ast.stmt) -> bool:
    """A step of the path: a statement with a yield (where another CPU may come in) or
    a call made for its effect. Setting a local from a call is not one."""
    if any(isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(s)):
        return True
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)


def _names(s: ast.stmt, ctx: type) -> set[str]:
    return {n.id for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
    """Neither sets a local name the other uses."""
    sa, sb = _names(a, ast.Store), _names(b, ast.Store)
    la, lb = _names(a, ast.Load), _names(b, ast.Load)
    return not (sa & (lb | sb)) and not (sb & la)


def _is_docstring(s: ast.stmt) -> bool:
    return (
        isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Constant)
        and isinstance(s.value.value, str)
    )


def _swappable(a: ast.stmt, b: ast.stmt) -> bool:
    if any(isinstance(x, _SIMPLE_ENDS) or _is_docstring(x) or ignored(x) for x in (a, b)):
        return False
    return (_is_step(a) or _is_step(b)) and _independent(a, b)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level functions and methods of top-level classes, by qualified name."""
    out: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, ast.FunctionDef):
                    out[f"{node.name}.{m.name}"] = m
    return out


def _bodies(fn: ast.FunctionDef) -> Iterator[list[ast.stmt]]:
    """Every statement list in the function, outermost first, in source order."""
    todo: list[list[ast.stmt]] = [fn.body]
    while todo:
        body = todo.pop(0)
        yield body
        for s in body:
            for field in ("body", "orelse", "finalbody"):
                sub = getattr(s, field, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    todo.append(sub)
            for h in getattr(s, "handlers", []):
                todo.append(h.body)


def _statements(fn: ast.FunctionDef) -> list[tuple[list[ast.stmt], int]]:
    """(body, index) of every statement, in the order ``_bodies`` gives."""
    return [(body, i) for body in _bodies(fn) for i in range(len(body))]


def _occurrences(fn: ast.FunctionDef) -> dict[int, int]:
    """id(statement) -> its occurrence number among statements of the same text."""
    seen: dict[str, int] = {}
    out: dict[int, int] = {}
    for body, i in _statements(fn):
        t = stmt_text(body[i])
        out[id(body[i])] = seen.get(t, 0)
        seen[t] = seen.get(t, 0) + 1
    return out


def _starts_line(s: ast.stmt, lines: list[str]) -> bool:
    """The statement starts its own line (no ``if x: stmt`` or ``a; b``)."""
    line = lines[s.lineno - 1]
    return line[: s.col_offset].strip() == ""


def _pair_of(body: list[ast.stmt], i: int) -> int | None:
    """The next statement in the same body that undoes or redoes the lock of
    ``body[i]`` (its release, or its re-acquire after a release)."""
    s = body[i]
    lock = _lock_of(s)
    want = is_release if is_acquire(s) else is_acquire
    for j in range(i + 1, len(body)):
        if want(body[j]) and _lock_of(body[j]) == lock:
            return j
    return None


# -- generating -------------------------------------------------------------------------


def _wait_loop_bodies(fn: ast.FunctionDef) -> set[int]:
    """ids of the bodies of loops that only wait: a wait there is skipped by dropping
    the loop (dropping the wait alone would spin without a yield)."""
    return {id(s.body) for s in ast.walk(fn) if isinstance(s, ast.While) and is_wait(s)}


def _mutants_of(module: str, qual: str, fn: ast.FunctionDef, lines: list[str]) -> list[Mutant]:
    occ = _occurrences(fn)
    spin = _wait_loop_bodies(fn)
    out: dict[str, list[Mutant]] = {op: [] for op in OPERATORS}

    def m(op: str, s: ast.stmt, s2: ast.stmt | None = None) -> Mutant:
        return Mutant(module, qual, op, stmt_text(s), occ[id(s)], stmt_text(s2) if s2 else "")

    for body, i in _statements(fn):
        s = body[i]
        if not _starts_line(s, lines) or ignored(s):
            continue
        if is_acquire(s):
            out["drop-lock"].append(m("drop-lock", s))
        if (is_acquire(s) or is_release(s)) and (j := _pair_of(body, i)) is not None:
            out["drop-lock-pair"].append(m("drop-lock-pair", s, body[j]))
        if i + 1 < len(body) and _starts_line(body[i + 1], lines) and _swappable(s, body[i + 1]):
            out["swap"].append(m("swap", s, body[i + 1]))
        if is_flush(s):
            out["drop-flush"].append(m("drop-flush", s))
        if is_wait(s) and id(body) not in spin:
            out["drop-wait"].append(m("drop-wait", s))
        if is_release(s):
            out["double-release"].append(m("double-release", s))
    return [x for op in OPERATORS for x in out[op]]


def generate(targets: dict[str, tuple[str, ...]] | None = None) -> list[Mutant]:
    """Every mutant of the targets, in a fixed order: module, function (as listed),
    operator, statement order."""
    out: list[Mutant] = []
    for module, funcs in (targets or TARGETS).items():
        src = module_path(module).read_text()
        tree = ast.parse(src)
        defs = _functions(tree)
        lines = src.splitlines()
        for qual in funcs:
            if qual not in defs:
                raise MutantError(f"{module}: no function {qual}")
            out.extend(_mutants_of(module, qual, defs[qual], lines))
    return out


def by_key(key: str, mutants: list[Mutant] | None = None) -> Mutant:
    for m in mutants if mutants is not None else generate():
        if m.key == key:
            return m
    raise MutantError(f"no mutant {key!r}")


# -- applying ---------------------------------------------------------------------------


def _find(fn: ast.FunctionDef, text: str, occ: int) -> tuple[list[ast.stmt], int]:
    n = 0
    for body, i in _statements(fn):
        if stmt_text(body[i]) == text:
            if n == occ:
                return body, i
            n += 1
    raise MutantError(f"{fn.name}: no statement {text!r} #{occ}")


def _span(s: ast.stmt) -> tuple[int, int]:
    assert s.end_lineno is not None
    return s.lineno - 1, s.end_lineno


def _apply(m: Mutant, source: str) -> str:
    tree = ast.parse(source)
    fn = _functions(tree).get(m.function)
    if fn is None:
        raise MutantError(f"{m.module}: no function {m.function}")
    body, i = _find(fn, m.text, m.occ)
    s = body[i]
    lines = source.splitlines(keepends=True)
    indent = lines[s.lineno - 1][: s.col_offset]
    a0, a1 = _span(s)
    dropped = f"{indent}pass  # mutant: {m.op}\n"
    if m.op in ("drop-lock", "drop-flush", "drop-wait"):
        new = [*lines[:a0], dropped, *lines[a1:]]
    elif m.op == "double-release":
        new = lines[:a1] + lines[a0:a1] + lines[a1:]
    elif m.op == "swap":
        if i + 1 >= len(body) or stmt_text(body[i + 1]) != m.text2:
            raise MutantError(f"{m.function}: {m.text!r} is not followed by {m.text2!r}")
        b0, b1 = _span(body[i + 1])
        new = lines[:a0] + lines[b0:b1] + lines[a1:b0] + lines[a0:a1] + lines[b1:]
    elif m.op == "drop-lock-pair":
        j = _pair_of(body, i)
        if j is None or stmt_text(body[j]) != m.text2:
            raise MutantError(f"{m.function}: {m.text!r} has no pair {m.text2!r}")
        b0, b1 = _span(body[j])
        new = [*lines[:a0], dropped, *lines[a1:b0], dropped, *lines[b1:]]
    else:
        raise MutantError(f"unknown operator {m.op!r}")
    return "".join(new)


class _Loader(importlib.abc.Loader):
    """Runs a module from source text held in memory, as if read from its file."""

    def __init__(self, source: str, path: Path) -> None:
        self.source = source
        self.path = path

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, source: str, path: Path) -> None:
        self.module = module
        self.loader = _Loader(source, path)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.module:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self.loader, origin=str(self.loader.path))
        spec.has_location = True
        return spec


@contextlib.contextmanager
def mutated(m: Mutant | None) -> Iterator[None]:
    """Inside: ``exitsim`` imported afresh with ``m`` applied (or unmutated, for None),
    so import what to run inside the block. After: the modules as they were."""
    saved = {n: mod for n, mod in sys.modules.items() if n == "exitsim" or n.startswith("exitsim.")}
    for n in saved:
        del sys.modules[n]
    finder = None
    if m is not None:
        finder = _Finder(m.module, m.apply(m.path.read_text()), m.path)
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
        for n in [n for n in sys.modules if n == "exitsim" or n.startswith("exitsim.")]:
            del sys.modules[n]
        sys.modules.update(saved)


# -- running ----------------------------------------------------------------------------


def check_design(
    design: str, scenarios: list[str], arches: list[str], preemptions: int
) -> dict[str, Any]:
    """Run the checker for ``design`` over the scenarios (each on every arch) with
    whatever ``exitsim`` is imported now; stop at the first finding. An exception that
    escapes the checker (the mutated code broke exitsim itself) is a finding too."""
    from exitsim.check.run import search
    from exitsim.check.scenarios import SCENARIOS
    from exitsim.policies.registry import get_policy

    runs = 0
    for name in scenarios:
        for arch in arches:
            runs += 1
            try:
                r = search(
                    SCENARIOS[name],
                    lambda: get_policy(design),
                    arch,
                    preemptions,
                    allow=EXIT_WINDOW_ALLOWED if name in THREADED else frozenset(),
                )
            except Exception as e:  # the mutated code may fail in any way
                return {
                    "result": "killed",
                    "scenario": name,
                    "arch": arch,
                    "invariant": None,
                    "how": f"exception {type(e).__name__}: {e}"[:200],
                    "runs": runs,
                }
            if r.violation is not None:
                how = "invariant" if r.invariant is not None else "error"
                return {
                    "result": "killed",
                    "scenario": name,
                    "arch": arch,
                    "invariant": r.invariant,
                    "how": f"{how}: {r.violation}"[:200],
                    "schedule": r.schedule,
                    "runs": runs,
                }
            if not r.complete:
                return {"result": "incomplete", "scenario": name, "arch": arch, "runs": runs}
    return {"result": "survived", "runs": runs}
