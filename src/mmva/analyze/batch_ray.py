"""The Ray executor of :func:`mmva.analyze.batch.analyze_collection` (``pip install 'mmva[ray]'``).

A pool of :class:`~mmva.analyze.batch.BatchWorker` actors, each holding the models, takes one file
at a time from the driver's queue (largest first). One file in flight per actor keeps the
promise that a killed worker loses only that file: the driver sees the actor die, records the
attempt, starts a new actor in its place and puts the file back in the queue while it has attempts
left. A plain actor pool rather than Ray Data's ``map_batches``: the order, the retries and the
failure records are the driver's, per file, and nothing else needs a dataset here.

The driver's S3 endpoint and region (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...) and mmva's own
settings (``MMVA_*``) are passed to the workers; credentials are not: each node uses its own AWS
chain (an instance role, or the environment ``ray start`` ran in).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mmva.analyze.batch import BatchOptions, BatchWorker, Task, _Queue, failure_row, write_record

log = logging.getLogger("mmva")

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
RAY_MISSING = "Ray is not installed: pip install 'mmva[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def worker_env() -> dict[str, str]:
    """The environment variables the driver hands to its workers.

    >>> "AWS_SECRET_ACCESS_KEY" in worker_env()
    False
    """
    return {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("MMVA_")}


def connect(address: str, num_cpus: float | None = None) -> bool:
    """Connect to the cluster at ``address`` (``"local"``: start a private one); True if this call did."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    env = worker_env()
    runtime_env = {"env_vars": env} if env else None
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    else:
        ray.init(address=address, runtime_env=runtime_env)
    return True


def default_workers(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """As many workers as the cluster has CPUs (and GPUs, when asked for) for."""
    ray = _import_ray()
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // max(cpus_per_worker, 1e-3))
    if gpus_per_worker:
        n = min(n, int(res.get("GPU", 0) // gpus_per_worker))
    return max(1, n)


def run_on_ray(queue: _Queue, options: BatchOptions, address: str, workers: int | None, cpus_per_worker: float,
               gpus_per_worker: float) -> int:
    """Drain ``queue`` on a pool of actors; returns the number of workers used."""
    ray = _import_ray()
    from ray.exceptions import RayError, RayTaskError

    started = connect(address, (workers * cpus_per_worker) if workers and address == "local" else None)
    actors: list[Any] = []
    try:
        n = max(1, min(workers or default_workers(cpus_per_worker, gpus_per_worker), len(queue)))
        remote = ray.remote(BatchWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                 max_restarts=0, max_task_retries=0)
        actors = [remote.remote(options) for _ in range(n)]
        inflight: dict[Any, tuple[int, Task]] = {}

        def feed() -> None:  # every idle actor takes the next file, if any
            busy = {i for i, _ in inflight.values()}
            for i in range(n):
                if i not in busy and (task := queue.pop()) is not None:
                    inflight[actors[i].run.remote(task)] = (i, task)

        feed()
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            i, task = inflight.pop(ref)
            try:
                row = ray.get(ref)
            except RayTaskError as exc:  # outside analyze(), which reports its own errors in the row
                row = failure_row(task, _first_line(exc), transient=False)
                write_record(task, row)
                queue.finish(task, row)
            except RayError as exc:  # the actor died (killed, out of memory, node lost)
                log.warning("worker %d lost while analysing %s: %s", i, task.source, _first_line(exc))
                ray.kill(actors[i], no_restart=True)
                actors[i] = remote.remote(options)
                queue.lost(task, f"worker lost while analysing it ({type(exc).__name__}: {_first_line(exc)})")
            else:
                queue.finish(task, row)
            feed()
        return n
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
