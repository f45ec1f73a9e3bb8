"""The pipeline's one description: its parameters and its stages, in order.

`STEPS` is the stage graph both entry points follow: `dags/router_pipeline.py` wires one
task (or one mapped group of tasks) per step and takes each task's arguments from
`Step.templated()`, and `run_pipeline` (`tela pipeline`) calls the same functions in the
same order with the same arguments (`Step.kwargs`). A stage, an argument or a parameter
added here reaches both; `tests/dags/test_pipeline_drift.py` fails when the DAG's tasks,
dependencies, arguments or parameter defaults stop matching this list.

`PARAMS` holds every pipeline parameter with its default, from the one parameter table
(`router_tasks.core.params`), which also gives the DAG's `params` and `tela pipeline`'s flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router_tasks.core import params as param_table
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import ingest_prompts
from router_tasks.data.labels import build_labels
from router_tasks.data.validate import validate_labels
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.labeling.agreement import measure_judge_agreement
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from router_tasks.labeling.judge_batch import run_judge_batch
from router_tasks.labeling.ledger import cost_ledger
from router_tasks.labeling.references import generate_references
from router_tasks.lifecycle.loop_settings import SETTINGS_KEYS
from router_tasks.lifecycle.publish import publish_router
from router_tasks.lifecycle.summary import summarize_run
from router_tasks.serving.feedback import feedback_labels_stage
from router_tasks.serving.traffic import resolve_source
from router_tasks.training.train import train_router


def ingest_source(source: str, sample: int | None = None, artifact_root: str | None = None) -> dict:
    """Ingest `source`, where a traffic window (`traffic://<from>/<to>`, the gateway's
    traffic log) is first exported to a prompts file: the next router learns from what
    users actually sent. Any other source goes to ingest unchanged. (No **kwargs: Airflow
    would pass its whole task context into them.)"""

    resolved = resolve_source(source, ArtifactStore(artifact_root))
    return ingest_prompts(resolved, sample=sample, artifact_root=artifact_root)


def labels_with_feedback(
    prompts: dict,
    judgements: dict,
    agreement: dict | None = None,
    source: str | None = None,
    include_routellm: bool = True,
    routellm_max_prompts: int | None = None,
    strong_quality: str = "labeled",
    strong_model: str | None = None,
    artifact_root: str | None = None,
) -> dict:
    """`build_labels`, where a traffic window source (`traffic://<from>/<to>`) also brings
    its users' ratings of the answers they were served (`POST /v1/feedback`), as labels for
    the model that answered, beside the judge's (source "feedback:<key name>")."""
    feedback = feedback_labels_stage(source, artifact_root)
    return build_labels(
        prompts,
        judgements,
        agreement,
        include_routellm=include_routellm,
        routellm_max_prompts=routellm_max_prompts,
        strong_quality=strong_quality,
        strong_model=strong_model,
        feedback=feedback,
        artifact_root=artifact_root,
    )


#: every parameter of a pipeline run, with its default (the offline demo)
PARAMS: dict = param_table.PIPELINE_PARAMS


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline.

    `name`: its key in the run's stage refs (the summary's rows). `task_id`: the DAG task
    whose return value is the step's ref. `fn`: the library function `tela pipeline` calls
    (the DAG may split it into plan/part/combine tasks, listed in `dag_tasks`). `inputs`:
    earlier steps whose refs are passed positionally (or, with `inputs_as_mapping`, as one
    {name: ref} dict). `params`: fn keyword -> pipeline parameter. `when`: a parameter
    that must hold `when_value` for the step to run (the DAG skips the task otherwise).
    `settings_kw`: a keyword that receives the run's settings, every parameter but
    `source` and `sample` as one dict (publish keeps them with the champion).
    """

    name: str
    task_id: str
    fn: Callable
    inputs: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    dag_tasks: tuple[str, ...] = ()
    inputs_as_mapping: bool = False
    when: tuple[str, object] | None = None
    settings_kw: str | None = None

    def kwargs(self, params: Mapping) -> dict:
        """The keyword arguments of `fn` for a run with `params`."""
        out = {kw: params[p] for kw, p in self.params.items()}
        if self.settings_kw:
            out[self.settings_kw] = {k: params[k] for k in SETTINGS_KEYS}
        return out

    def templated(self) -> dict:
        """The same arguments as Airflow templates of the DAG's params."""
        out = {kw: f"{{{{ params.{p} }}}}" for kw, p in self.params.items()}
        if self.settings_kw:
            out[self.settings_kw] = {k: f"{{{{ params.{k} }}}}" for k in SETTINGS_KEYS}
        return out

    def runs(self, params: Mapping) -> bool:
        return self.when is None or params[self.when[0]] == self.when[1]


STEPS: tuple[Step, ...] = (
    Step("ingest", "ingest_prompts", ingest_source, (), {"source": "source", "sample": "sample"}),
    Step("references", "generate_references", generate_references, ("ingest",), {"reference": "reference_model"}),
    Step(
        "generate",
        "generate_answers",
        generate_answers,
        ("ingest",),
        {"models": "models", "max_tokens": "max_tokens"},
        dag_tasks=("plan_generation", "generate_part", "generate_answers"),
    ),
    # batch mode: buy the verdicts through the OpenAI Batch API into the request cache first
    Step(
        "judge_batch",
        "collect_judge_batch",
        run_judge_batch,
        ("references", "generate"),
        {"judge": "judge", "judges": "judges"},
        dag_tasks=("prepare_judge_batch", "judge_batch_run", "collect_judge_batch"),
        when=("judge_mode", "batch"),
    ),
    Step(
        "judge",
        "judge_answers",
        judge_answers,
        ("references", "generate"),
        {"judge": "judge", "judges": "judges", "vote": "judge_vote"},
        dag_tasks=("plan_judging", "judge_part", "judge_answers"),
    ),
    # the judge also grades a seeded sample of the gold-graded answers: its agreement with exact match
    Step(
        "agreement",
        "judge_agreement",
        measure_judge_agreement,
        ("references", "generate", "judge"),
        {
            "judge": "judge",
            "judges": "judges",
            "vote": "judge_vote",
            "sample_size": "judge_agreement_sample",
            "min_agreement": "judge_min_agreement",
        },
    ),
    Step(
        "ledger",
        "cost_ledger",
        cost_ledger,
        ("references", "generate", "judge_batch", "judge", "agreement"),
        inputs_as_mapping=True,
    ),
    Step(
        "labels",
        "build_labels",
        labels_with_feedback,
        ("references", "judge", "agreement"),
        {
            "source": "source",
            "include_routellm": "include_routellm",
            "routellm_max_prompts": "routellm_max_prompts",
            "strong_quality": "strong_quality",
            "strong_model": "strong_model",
        },
    ),
    Step("validate", "validate_labels", validate_labels, ("labels",), {"min_rows_per_model": "min_rows_per_model"}),
    Step(
        "train",
        "train_router",
        train_router,
        ("validate",),
        {
            "router_type": "router_type",
            "strong_model": "strong_model",
            "weak_model": "weak_model",
            "router_params": "router_params",
            "use_gpu": "use_gpu",
            "strong_quality": "strong_quality",
        },
        dag_tasks=("train_router_cpu", "train_router_gpu", "train_router"),
    ),
    Step(
        "evaluate",
        "evaluate_router",
        evaluate_router,
        ("train",),
        {
            "benchmarks": "benchmarks",
            "max_prompts": "eval_max_prompts",
            "models": "models",
            "quality_target": "quality_target",
        },
        dag_tasks=("evaluate_router_cpu", "evaluate_router_gpu", "evaluate_router"),
    ),
    Step("publish", "publish_router", publish_router, ("train", "evaluate"), settings_kw="settings"),
)
STEP = {s.name: s for s in STEPS}
#: the steps whose refs the run summary lists (publish is the decision, not a stage row)
SUMMARY_STAGES = (
    "ingest",
    "references",
    "generate",
    "judge",
    "agreement",
    "labels",
    "validate",
    "train",
    "evaluate",
    "ledger",
)


def resolve_params(overrides: Mapping | None = None) -> dict:
    """PARAMS with `overrides` (unknown names are an error, None values keep the default
    only for parameters whose default is not None)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(PARAMS)}")
    return {**PARAMS, **overrides}


def run_pipeline(params: Mapping | None = None, *, run_id: str = "cli", artifact_root: str | None = None, **kw) -> dict:
    """Run every step of `STEPS` in order; returns {"stages": refs, "decision", "summary"}.

    `params` (or keyword arguments) override `PARAMS`, e.g. `run_pipeline(source=...,
    models=[...], judge={...}, strong_model=..., weak_model=...)`.
    """
    p = resolve_params({**dict(params or {}), **kw})
    root = {"artifact_root": artifact_root}
    refs: dict = {}
    for step in STEPS:
        if not step.runs(p):
            refs[step.name] = None
            continue
        args = [refs[i] for i in step.inputs]
        if step.inputs_as_mapping:
            args = [{i: refs[i] for i in step.inputs}]
        refs[step.name] = step.fn(*args, **step.kwargs(p), **root)
    stages = {name: refs[name] for name in SUMMARY_STAGES}
    decision = refs["publish"]
    summary = summarize_run(stages, decision, run_id=run_id, **root)
    return {"stages": stages, "decision": decision, "summary": summary}
