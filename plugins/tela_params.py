"""The DAGs' trigger-form params, from the one pipeline parameter table
(`router_tasks.core.params`): the library gives plain dicts, this turns them into Airflow
`Param`s, so the forms of router_pipeline and router_retraining say what `tela pipeline`
says, with the same defaults."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from airflow.sdk import Param

from router_tasks.core.params import param_specs

#: what router_retraining takes from the loop's settings unless its run names them
MODEL_PAIR = ("strong_model", "weak_model", "benchmarks")


def pipeline_params(
    names: Iterable[str] | None = None,
    *,
    enums: Mapping[str, Sequence[str]] | None = None,
    from_loop: Iterable[str] = (),
) -> dict[str, Param]:
    """{name: Param} for `names` (default: every pipeline parameter). Fresh Param objects
    each call: a DAG's params are its own, not shared with another DAG.

    `enums`: choices the table leaves to the caller (the router registry's kinds).
    `from_loop`: empty by default, meaning "the loop's settings" (the labels' and the
    champion's recorded settings, the Variable): what a scheduled or Asset-triggered run,
    which never gets a conf, must use instead of the demo's values."""
    return {name: Param(**spec) for name, spec in param_specs(names, enums=enums, from_loop=from_loop).items()}
