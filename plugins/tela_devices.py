"""A stage on the CPU or the GPU, in one line of a DAG.

Routers that need a GPU (`router_tasks.routers.GPU_ROUTERS`: causal_llm) train, and are
scored, on the GPU queue in the GPU pool; the others on the default queue. Each such stage
is two tasks, `<stage>_cpu` and `<stage>_gpu` (`device_tasks`), both bounded by a timeout,
and one task named `<stage>` that passes on the result of whichever ran:

- `on_chosen_device` (router_pipeline, one router): a branch task `<verb>_on` (train_on,
  evaluate_on) picks the one to run from the run's router type and `use_gpu`; the other is
  skipped; `<stage>` returns the ref of the one that ran.
- `on_each_device` (router_retraining, one router per type): both tasks are mapped, each
  over its device's share of the types, and the merge task puts the results back in the
  types' order (a task mapped over nothing is skipped, not failed).

Airflow-only (plugins/ is on sys.path): the DAGs import it as `tela_devices`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

from airflow.sdk import XComArg, task

from router_tasks.core import defaults


def device_tasks(stage, task_id: str, hours: float, **overrides) -> dict[str, Any]:
    """{"cpu": `stage` as task `<task_id>_cpu`, "gpu": as `<task_id>_gpu` on the GPU queue
    and pool}, both with an execution timeout of `hours`. `stage`: a @task-decorated
    function; `overrides`: further task settings (retries) for both."""
    timeout = timedelta(hours=hours)
    return {
        "cpu": stage.override(task_id=f"{task_id}_cpu", execution_timeout=timeout, **overrides),
        "gpu": stage.override(
            task_id=f"{task_id}_gpu",
            queue=defaults.GPU_QUEUE,
            pool=defaults.GPU_POOL,
            execution_timeout=timeout,
            **overrides,
        ),
    }


@task.branch
def _choose_device(stage: str, router_type: str, use_gpu: bool) -> str:
    """The task to run: `<stage>_gpu` for a router that needs a GPU (and may use it), else `<stage>_cpu`."""
    from router_tasks.training.train import train_device

    return f"{stage}_{train_device(router_type, use_gpu)}"


@task(trigger_rule="none_failed_min_one_success")
def _ran(on_cpu: dict | None, on_gpu: dict | None) -> dict:
    """The ref of whichever device's task ran (the other was skipped: its value is None)."""
    return on_cpu or on_gpu


def on_chosen_device(
    stage, task_id: str, *, router_type: str, use_gpu: str | bool, hours: float, **overrides
) -> Callable[..., XComArg]:
    """`stage` run on the device its router needs: call the result with the stage's
    arguments. Builds the branch `<verb>_on` (after the stage's XCom inputs), the two
    device tasks, and the task `task_id` whose value is the ref of the one that ran.
    `router_type`, `use_gpu`: values or templates of the DAG's params."""

    def call(*args, **kwargs) -> XComArg:
        branch = _choose_device.override(task_id=f"{task_id.split('_')[0]}_on")(
            stage=task_id, router_type=router_type, use_gpu=use_gpu
        )
        for arg in args:
            if isinstance(arg, XComArg):
                arg >> branch
        tasks = device_tasks(stage, task_id, hours, **overrides)
        on_cpu, on_gpu = tasks["cpu"](*args, **kwargs), tasks["gpu"](*args, **kwargs)
        branch >> [on_cpu, on_gpu]
        return _ran.override(task_id=task_id)(on_cpu, on_gpu)

    return call


class OnEachDevice(NamedTuple):
    merged: XComArg  # every result, in the types' order
    cpu: XComArg  # the mapped CPU task's results
    gpu: XComArg  # the mapped GPU task's results

    @property
    def by_device(self) -> dict[str, XComArg]:
        """What a later stage maps over on each device: {"cpu": ..., "gpu": ...}."""
        return {"cpu": self.cpu, "gpu": self.gpu}


# a task mapped over no type is skipped, not failed; with no labels at all every upstream
# is skipped, and so is this
@task(trigger_rule="none_failed_min_one_success")
def _in_type_order(split: dict, on_cpu, on_gpu) -> list[dict]:
    from router_tasks.lifecycle.retraining import in_type_order

    # index mapped results instead of iterating them (iteration logs spurious XCom errors)
    return in_type_order(split, [on_cpu[i] for i in range(len(on_cpu))], [on_gpu[i] for i in range(len(on_gpu))])


def on_each_device(
    stage,
    task_id: str,
    split: XComArg,
    over: dict[str, dict[str, Any]],
    *,
    hours: float,
    merged_id: str | None = None,
    fixed: dict | None = None,
    **overrides,
) -> OnEachDevice:
    """`stage` mapped on both devices: the CPU task over `over[kw]["cpu"]`, the GPU task over
    `over[kw]["gpu"]` (kw: the mapped keyword), each with the `fixed` keyword arguments;
    merged by the task `merged_id` (default `task_id`) in the order of `split`
    (`retraining.split_by_device`'s answer)."""
    tasks = device_tasks(stage, task_id, hours, **overrides)
    mapped = {
        device: t.partial(**(fixed or {})).expand(**{kw: values[device] for kw, values in over.items()})
        for device, t in tasks.items()
    }
    merged = _in_type_order.override(task_id=merged_id or task_id)(split, mapped["cpu"], mapped["gpu"])
    return OnEachDevice(merged, mapped["cpu"], mapped["gpu"])
