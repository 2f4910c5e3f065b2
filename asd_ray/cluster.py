"""Connecting to Ray: the cluster in $RAY_ADDRESS (set by ``ray job submit``), else a local one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import ray

from asd_ray import console


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster this process was started in, or start a local Ray (single-node mode)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Arrow's own allocator pool keeps what Parquet reads freed, so a long-lived read worker's memory
    # grows with the data it has read; the system allocator hands it back (the local Ray's workers
    # inherit this; on a cluster the nodes' environment sets it: infra/docker/Dockerfile)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    console.quiet_ray_loggers()  # before ray.init: its own warnings too
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, **console.ray_init_options())
    else:
        # The dashboard serves the state API, which Ray Train's placement-group cleaner needs to
        # free a finished run's worker CPUs; without it each Tune trial can leak its workers' CPUs.
        ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=True, **console.ray_init_options())
    console.quiet_ray_loggers()
    console.show_ray_warnings_once()


K = TypeVar("K")


def as_completed(calls: Iterable[tuple[K, Callable[[], ray.ObjectRef]]]) -> Iterator[tuple[K, object]]:
    """Start each ``(key, start)`` call's task, at most as many running at once as the cluster has
    CPUs (a task's inputs reach the object store only when it starts), and yield ``(key, result)``
    as they finish. A task's own error is raised as itself (a ``ValueError`` naming a section),
    not as Ray's ``RayTaskError`` traceback."""
    window = max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[ray.ObjectRef, K] = {}

    def finished() -> tuple[K, object]:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready)
        try:
            return key, ray.get(ready)
        except ray.exceptions.RayTaskError as err:
            raise (err.cause if isinstance(err.cause, Exception) else err) from None

    for key, start in calls:
        if len(pending) >= window:
            yield finished()
        pending[start()] = key
    while pending:
        yield finished()
