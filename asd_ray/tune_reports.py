"""A Ray Train run inside a Tune trial, its epochs reported to Tune from the trial's own thread.

Ray 2.60's ``TuneReportCallback`` hands each epoch's metrics to the trial's *main* thread, which
puts them on the Tune session's one-slot result queue. When the run ends while Tune is still
handling the previous epoch (fast epochs, a slow callback such as MLflow logging), the trial
function returns first and puts Tune's end-of-function marker in that slot; the main thread then
waits to put the last epoch behind it, and only the main thread takes from that slot: the trial
hangs with its last epoch unreported (this project's ASHA test: 3 runs in 7; README, sweeps).

Here the run goes on in a thread of its own and the trial function reports every epoch itself
with ``ray.tune.report``, the plain function-trainable path, then returns after the last one.
The one-slot queue between the Train controller and the trial keeps Tune's pace: the run's next
report waits until the trial has taken this one, so that ASHA can stop a trial after any epoch.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
import ray.tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CHECKPOINT_PATH_KEY = "checkpoint_path"  # as Ray's TuneReportCallback names it
_END = "__end_of_run__"


class ForwardReports(UserCallback):
    """Runs in the Train controller: each report's metrics (rank 0's) onto the trial's queue."""

    def __init__(self, reports: Queue):
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.reports.put(item)


def fit_in_trial(make_trainer) -> None:
    """Build a trainer with ``make_trainer(callbacks)`` and run it, reporting each epoch to Tune
    from this (the trial's) thread; re-raises the run's error."""
    # beside the trial on its node: a node lost takes the trial and its queue together
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reports = Queue(1, actor_options={"num_cpus": 0, "scheduling_strategy": here})
    trainer = make_trainer([ForwardReports(reports)])
    failure: list[BaseException] = []

    def run() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the trial's thread, which raises it
            failure.append(e)
        finally:
            reports.put(_END)  # after every report: the controller's puts are done when fit returns

    threading.Thread(target=run, name="train-run", daemon=True).start()
    while (item := reports.get()) != _END:
        ray.tune.report(item)
    if failure:
        raise failure[0]
