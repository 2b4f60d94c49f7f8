"""Where a sweep's runs run: in this process, on a local process pool, or on a
dask.distributed cluster. Every run is independent: a task carries only its config,
the worker imports exitsim, runs it and sends back ``(key, Result as JSON text)``;
the caller gets results as they finish, in whatever order, and stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from exitsim.experiment.store import Store, config_key, model_digest, result_text
from exitsim.sim import SimConfig

#: What a worker sends back for one config: its store key, its Result's JSON, and
#: the digest of the model that ran it.
Done = tuple[str, str, str]
#: Runs configs and yields each one's ``Done`` as it finishes, in any order.
Mapper = Callable[[Sequence[SimConfig]], Iterator[Done]]


def run_one(cfg: SimConfig) -> Done:
    """One run, as a worker does it."""
    from exitsim.sim import simulate

    return config_key(cfg), result_text(simulate(cfg)), model_digest()


#: What a worker does with one config; ``run_one`` unless told otherwise.
Task = Callable[[SimConfig], Any]


@contextmanager
def local_pool(workers: int, task: Task = run_one) -> Iterator[Mapper]:
    """``workers`` processes on this machine (spawned, so each imports exitsim
    afresh, as a cluster's workers do); one worker runs in this process."""
    if workers <= 1:

        def serial(configs: Sequence[SimConfig]) -> Iterator[Any]:
            return map(task, configs)

        yield serial
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:

        def mapper(configs: Sequence[SimConfig]) -> Iterator[Any]:
            yield from pool.imap_unordered(task, configs)

        yield mapper


@contextmanager
def dask_cluster(
    scheduler: str | None = None, local_workers: int = 0, task: Task = run_one
) -> Iterator[Mapper]:
    """A dask.distributed cluster: the scheduler at ``scheduler``
    (``tcp://HOST:PORT``), or a LocalCluster of ``local_workers`` worker processes
    on loopback, one thread each. A future's result is fetched from its worker once
    and released, so no Result passes through the scheduler or stays on a worker."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=local_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    try:
        client = Client(cluster if cluster is not None else scheduler)
        try:

            def mapper(configs: Sequence[SimConfig]) -> Iterator[Any]:
                # The key names the task after its config: the same config sent
                # twice is one task, never two runs.
                name = getattr(task, "__name__", "task")
                futures = [
                    client.submit(task, cfg, key=f"exitsim-{name}-{config_key(cfg)}", pure=False)
                    for cfg in configs
                ]
                for fut in as_completed(futures):
                    done = fut.result()
                    fut.release()
                    yield done

            yield mapper
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def executor(
    workers: int = 2, scheduler: str | None = None, dask_local: int = 0, task: Task = run_one
) -> Any:
    """The pool a sweep runs on: dask when a scheduler or a local dask cluster is
    asked for, else ``workers`` local processes; each config goes through ``task``."""
    if scheduler is not None or dask_local:
        return dask_cluster(scheduler, dask_local, task)
    return local_pool(workers, task)


class SweepError(RuntimeError):
    """A sweep cannot go on: one line saying why."""


@dataclass(frozen=True, slots=True)
class Tally:
    """What a sweep did: runs it asked for, found in the store, ran now."""

    total: int
    found: int
    ran: int


def run_missing(
    configs: Sequence[SimConfig],
    store: Store,
    mapper: Mapper,
    on_done: Callable[[], None] | None = None,
) -> Tally:
    """Run the configs whose key the store lacks, each once, committing each Result
    as it arrives: killed at any point, the store holds every finished run and a
    restart runs only the rest."""
    have = store.keys()
    keys = {config_key(c): c for c in configs}
    todo = {k: cfg for k, cfg in keys.items() if k not in have}
    unique = len(keys)
    ran = 0
    here = model_digest()
    for key, text, model in mapper(list(todo.values())):
        if model != here:
            # A worker with another copy of exitsim would store results this one
            # cannot reproduce: stop before any goes in.
            raise SweepError(
                f"a worker runs another version of exitsim's model (digest {model}, "
                f"here {here}): install the same exitsim on every worker"
            )
        store.put(key, todo[key], text, model)
        ran += 1
        if on_done is not None:
            on_done()
    return Tally(unique, unique - len(todo), ran)
