"""The designs by name, and loading a user's own from a file (``--policy-file``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from exitsim.policies.base import Policy
from exitsim.policies.noreaper import NoReaper
from exitsim.policies.others import FreeBSD, Linux
from exitsim.policies.purge import Purge, PurgeLocked, PurgePmapPurge
from exitsim.policies.reaper import Reaper, ReaperFifo, ReaperLocked

DESIGNS: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        Reaper,
        ReaperLocked,
        ReaperFifo,
        Purge,
        PurgeLocked,
        PurgePmapPurge,
        NoReaper,
        Linux,
        FreeBSD,
    )
}


class PolicyLoadError(ValueError):
    """A design name or policy file that does not give a design; one line."""


def get_policy(name: str) -> Policy:
    try:
        return DESIGNS[name]()
    except KeyError:
        raise PolicyLoadError(f"unknown design {name!r} (known: {', '.join(DESIGNS)})") from None


def load_policy_file(path: str) -> Policy:
    """Import ``path`` and return its design: the one ``Policy`` subclass it defines
    (or the one named ``POLICY``)."""
    p = Path(path)
    if not p.is_file():
        raise PolicyLoadError(f"{path}: no such policy file")
    spec = importlib.util.spec_from_file_location(f"exitsim_user_policy_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"{path}: cannot be imported as Python")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # a user's file may fail in any way; report it in one line
        raise PolicyLoadError(f"{path}: does not load: {type(e).__name__}: {e}") from None
    chosen = getattr(mod, "POLICY", None)
    if chosen is None:
        found = [
            v
            for v in vars(mod).values()
            if isinstance(v, type) and issubclass(v, Policy) and v.__module__ == mod.__name__
        ]
        if len(found) != 1:
            raise PolicyLoadError(
                f"{path}: defines {len(found)} Policy subclasses; define one, or name it POLICY"
            )
        chosen = found[0]
    if not (isinstance(chosen, type) and issubclass(chosen, Policy)):
        raise PolicyLoadError(f"{path}: POLICY is not a Policy subclass")
    if not getattr(chosen, "name", "") or chosen.name == "base":
        raise PolicyLoadError(f'{path}: the design needs a name (name = "...")')
    return chosen()
