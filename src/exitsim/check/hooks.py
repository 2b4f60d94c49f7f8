"""Telling a design's own exception from a bug in exitsim, for ``exitsim check``.

A design brought with ``--policy-file`` is code exitsim does not control: a hook may
raise anything. Such an exception is a finding about the design, reported like an
invariant violation (with its schedule, exit status 1); an exception raised by
exitsim's own code stays an internal error (exit status 3).

The rule looks at where the exception was raised. Walking the traceback from the
innermost frame outwards, the first frame that belongs either to exitsim (a file in the
``exitsim`` package) or to the design decides. The design's own classes are the
``Policy`` subclasses in its class hierarchy that do not come from an ``exitsim``
module (a ``--policy-file`` class, or one defined in a test); its code is every file in
which those classes define a function (so a helper function in the policy file counts,
as do the hooks), plus the ``Policy`` base class's defaults running on its behalf (a
hook it should have defined raises ``NotImplementedError`` there). Frames of other code
(the standard library, other packages, a module of helpers the policy file imports) are
passed over: a ``json.loads`` failing in a hook is blamed on the hook's line that
called it. When no frame decides, the exception is exitsim's, and a built-in design
(no class of its own) never has a finding of this kind.
"""

from __future__ import annotations

import linecache
import traceback
from pathlib import Path
from types import CodeType
from typing import Any

import exitsim
from exitsim.engine.errors import SimError
from exitsim.policies.base import Policy

_EXITSIM_DIR = Path(exitsim.__file__).resolve().parent


class DesignError(SimError):
    """An exception a design's own code raised while the checker ran it; a finding,
    like an invariant violation. ``original`` is the exception itself."""

    def __init__(
        self,
        design: str,
        original: BaseException,
        filename: str,
        lineno: int,
        function: str,
    ) -> None:
        self.design = design
        self.original = original
        self.exc_type = type(original).__name__
        self.exc_message = str(original)
        self.filename = filename
        self.lineno = lineno
        self.function = function
        self.source = linecache.getline(filename, lineno).strip()
        super().__init__(
            f"exception in design {design}: {self.exc_type}: {self.exc_message} "
            f"(in {function}, {filename}:{lineno})"
        )

    @property
    def where(self) -> str:
        """Where it was raised: what makes two failures the same when shrinking."""
        return f"{self.exc_type} {self.filename}:{self.lineno}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.exc_type,
            "message": self.exc_message,
            "file": self.filename,
            "line": self.lineno,
            "function": self.function,
            "source": self.source,
        }


def _is_exitsim(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_EXITSIM_DIR)
    except (OSError, ValueError):
        return False


def _codes(cls: type) -> list[CodeType]:
    """The code objects of the functions a class itself defines."""
    out = []
    for v in vars(cls).values():
        if isinstance(v, (staticmethod, classmethod)):
            v = v.__func__
        elif isinstance(v, property):
            v = v.fget
        code = getattr(v, "__code__", None)
        if isinstance(code, CodeType):
            out.append(code)
    return out


def _is_exitsim_class(cls: type) -> bool:
    return cls.__module__ == "exitsim" or cls.__module__.startswith("exitsim.")


def design_code(policy: Policy) -> tuple[set[str], set[CodeType]]:
    """The files and code objects that are the design's own (see the module docstring);
    both empty for a built-in design."""
    own = [
        cls
        for cls in type(policy).__mro__
        if issubclass(cls, Policy) and cls is not Policy and not _is_exitsim_class(cls)
    ]
    if not own:
        return set(), set()
    files = {code.co_filename for cls in own for code in _codes(cls)}
    return files, set(_codes(Policy))


def blame(exc: BaseException, policy: Policy) -> DesignError | None:
    """``exc`` as a finding about ``policy`` when the design's code raised it; None
    when it is exitsim's (or nobody's that can be told)."""
    if isinstance(exc, SimError):
        return None
    files, codes = design_code(policy)
    if not codes:
        return None
    frames = list(traceback.walk_tb(exc.__traceback__))
    for frame, lineno in reversed(frames):
        code = frame.f_code
        if code.co_filename in files or code in codes:
            return DesignError(policy.name, exc, code.co_filename, lineno, code.co_name)
        if _is_exitsim(code.co_filename):
            return None
    return None
