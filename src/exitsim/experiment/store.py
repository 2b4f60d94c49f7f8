"""The store of a sweep's results: one SQLite file, a row per run, keyed by a hash of
the run's whole config.

SQLite because it is in the standard library, one file that is copied or mailed as
is, and a transaction per result makes each write atomic: a sweep killed mid-write
(``kill -9``, a lost node) leaves every result it committed and none half-written,
and a result written twice is refused by its key. Only the process that hands out the
runs writes; the workers never open the file, so one writer is all it needs. The
journal is WAL with ``synchronous=NORMAL``: a commit survives the process dying, not
the machine losing power, and costs well under a millisecond (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from exitsim.sim import SimConfig

#: The store's layout; a store of another version is refused, not misread.
STORE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """A store that cannot be used: one line naming the file."""


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror or e}") from None


#: The parts of exitsim a Result depends on: the model and what builds its Result.
#: The command line, the reports and the sweep machinery are left out, so changing
#: a plot does not make a store's results stale.
MODEL_PARTS: tuple[str, ...] = (
    "engine",
    "kern",
    "machine",
    "policies",
    "vm",
    "workloads",
    "sim.py",
    "report/result.py",
    "report/kprof.py",
)


@functools.cache
def model_digest() -> str:
    """A hash of the model's source (``MODEL_PARTS``, cost profiles included): two
    copies of exitsim with the same digest give the same Result for a config."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in MODEL_PARTS:
        base = root / part
        files = [base] if base.is_file() else sorted(base.rglob("*"))
        for f in files:
            if f.suffix in (".py", ".toml") and f.is_file():
                h.update(f.relative_to(root).as_posix().encode() + b"\0")
                h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def config_key(cfg: SimConfig) -> str:
    """A hash of everything that decides a run's Result: the model's source
    (``model_digest``), the config's fields, and the contents (not only the names)
    of the cost profile and design files it points at, so an edited file or a
    changed model is a new run."""
    doc: dict[str, Any] = {"model": model_digest(), "config": cfg.as_dict()}
    if cfg.profile is not None:
        doc["profile_sha"] = _file_digest(cfg.profile)
    if cfg.policy_file is not None:
        doc["policy_file_sha"] = _file_digest(cfg.policy_file)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def result_text(result: dict[str, Any]) -> str:
    """A Result as the store keeps it: canonical JSON, so equal Results are equal
    text."""
    return json.dumps(result, sort_keys=True, separators=(",", ":"))


class Store:
    """A sweep's results on disk. ``put`` commits one result; ``keys`` says what is
    there, so a restarted sweep runs only the rest."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        p = Path(path)
        if p.exists() and not p.is_file():
            raise StoreError(f"{path}: not a regular file")
        if p.is_file() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise StoreError(f"{path}: not a sweep store (not an SQLite file)")
        elif not p.parent.is_dir():
            raise StoreError(f"{path}: directory {p.parent} does not exist")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.Error as e:
            raise StoreError(f"{path}: {e}") from None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(STORE_VERSION),)
            )
        elif row[0] != str(STORE_VERSION):
            raise StoreError(
                f"{self.path}: store version {row[0]}, this exitsim reads {STORE_VERSION}"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM results")}

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM results").fetchone()[0])

    def put(self, key: str, config: SimConfig, text: str, model: str | None = None) -> bool:
        """Commit one Result (its canonical JSON ``text``) under ``key``, made by the
        model of digest ``model`` (default: this one), in its own transaction;
        False when the key was already there (the row is kept)."""
        cfg = json.dumps(config.as_dict(), sort_keys=True, separators=(",", ":"))
        cur = self._db.execute(
            "INSERT OR IGNORE INTO results (key, model, config, result) VALUES (?, ?, ?, ?)",
            (key, model or model_digest(), cfg, text),
        )
        return cur.rowcount == 1

    def models(self) -> dict[str, int]:
        """How many results each model digest made."""
        rows = self._db.execute("SELECT model, count(*) FROM results GROUP BY model ORDER BY model")
        return {m: int(n) for m, n in rows}

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def results(
        self, keys: Iterable[str] | None = None, model: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The Results of model ``model`` (default: every one), in key order; or
        those of ``keys``, in their order, skipping any not there."""
        if keys is None:
            query = "SELECT result FROM results WHERE ? IS NULL OR model = ? ORDER BY key"
            for (text,) in self._db.execute(query, (model, model)):
                yield json.loads(text)
            return
        for k in keys:
            r = self.get(k)
            if r is not None:
                yield r

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])
