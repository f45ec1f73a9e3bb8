"""Every setting a team can change, as data: the pipeline's parameters (the table in
`router_tasks.core.params`) and the `TELA_*` environment variables the code reads
(`ENV_VARS` below), and the settings reference built from both (docs/settings.md,
written by `scripts/settings_doc.py`; tests/core/test_settings_doc.py fails when the file
is stale or a `TELA_*` variable read in the code is missing here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router_tasks.core.params import TABLE, PipelineParam


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: what it means, its default (as a reader would write it),
    and who reads or sets it (`scope`)."""

    name: str
    meaning: str
    default: str
    scope: str


LIBRARY, SERVING = "library", "gateway"
AIRFLOW, CLUSTER = "Airflow (plugins, DAGs)", "make cluster (scripts/cluster.py)"

ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "TELA_ARTIFACT_ROOT",
        "where stages keep their artifacts: a local folder, file:// or s3:// URI (`tela --artifact-root` wins)",
        "./artifacts",
        LIBRARY,
    ),
    EnvVar(
        "TELA_S3_ENDPOINT_URL",
        "the S3 API to talk to for s3:// roots (MinIO, moto); set from the S3 connection's extra in Airflow tasks",
        "AWS S3",
        LIBRARY,
    ),
    EnvVar(
        "TELA_STAGE_LEASE_S",
        "seconds a stage's lease in an S3 store outlives a holder that stopped "
        "renewing it (then another run may take the stage over)",
        "120",
        LIBRARY,
    ),
    EnvVar(
        "TELA_MODEL_CACHE",
        "folder for converted local models (the dequantised SmolLM2), shared by the "
        "bundled LLM server and the causal-LLM router",
        "$XDG_CACHE_HOME/tela/models, else ~/.cache/tela/models",
        LIBRARY,
    ),
    EnvVar(
        "TELA_ROUTELLM_DATA",
        "folder of RouteLLM benchmark data to read instead of the bundled copy",
        "the bundled copy",
        LIBRARY,
    ),
    EnvVar(
        "TELA_DQ_THRESHOLDS",
        "JSON object overriding data-quality thresholds (a stage's own `thresholds` "
        'win), e.g. {"min_judge_agreement": 0.7}',
        "the built-in thresholds",
        LIBRARY,
    ),
    EnvVar("TELA_BATCH_POLL_SECONDS", "how often a judge Batch API wait asks for the batch's status", "60", LIBRARY),
    EnvVar(
        "TELA_LOCAL_LLM_URL",
        'base URL of an already running bundled LLM server (base_url "local") to '
        "share instead of starting one per stage",
        "start one per stage",
        LIBRARY,
    ),
    EnvVar(
        "TELA_EMBEDDING_CACHE_BYTES",
        "size bound of the process-wide prompt-vector cache (least recently used vectors go first)",
        "268435456 (256 MiB)",
        LIBRARY,
    ),
    EnvVar("TELA_ONNX_THREADS", "threads of the ONNX MiniLM prompt embedder", "1", LIBRARY),
    EnvVar(
        "TELA_GPU_LOCK_DIR",
        "folder of the per-GPU lock files a causal-LLM fine-tune holds while it runs",
        "<tmp>/tela-gpu-locks",
        LIBRARY,
    ),
    EnvVar("TELA_LAUNCH_WORKER", 'internal: "1" in the worker process a causal-LLM fine-tune starts', "unset", LIBRARY),
    EnvVar(
        "TELA_GATEWAY_CONFIG",
        "internal: the gateway's configuration (JSON, no secrets) that `tela serve "
        "--workers N` hands its worker processes",
        "set by tela serve",
        SERVING,
    ),
    EnvVar(
        "TELA_GATEWAY_REDIS_URL",
        "Redis URL for the client keys' rpm and spend counters, shared by replicas "
        "and workers (`tela serve --redis-url` wins)",
        "in-process counters",
        SERVING,
    ),
    EnvVar(
        "TELA_S3_CONN_ID",
        "the Airflow connection (type aws) whose keys and endpoint_url tasks use for the artifact store",
        "tela_s3",
        AIRFLOW,
    ),
    EnvVar(
        "TELA_ALERTS",
        "JSON alert config (webhook, slack or smtp notifier) for failed runs and data-quality failures",
        "the Airflow Variable tela_alerts, else log only",
        AIRFLOW,
    ),
    EnvVar(
        "TELA_RETRY_DELAY_SCALE",
        "multiplies every task retry delay (read when DAG files are parsed; tests set it low)",
        "1",
        AIRFLOW,
    ),
    EnvVar(
        "TELA_WORKER_NAME",
        "the name a Celery worker's task instances record as their hostname",
        "the host's FQDN",
        AIRFLOW,
    ),
    EnvVar(
        "TELA_CLUSTER_DIR", "the local cluster's state folder (database, logs, keys)", ".cluster/ in the repo", CLUSTER
    ),
    EnvVar(
        "TELA_CLUSTER_ENV_FILE",
        "where the cluster writes the environment clients need",
        "cluster.env in the repo",
        CLUSTER,
    ),
    EnvVar("TELA_CLUSTER_PG_PORT", "the cluster's Postgres port", "55432", CLUSTER),
    EnvVar("TELA_CLUSTER_REDIS_PORT", "the cluster's Redis port", "56379", CLUSTER),
    EnvVar("TELA_CLUSTER_API_PORT", "the cluster's Airflow API server port", "58080", CLUSTER),
    EnvVar("TELA_CLUSTER_S3_PORT", "the cluster's S3 (MinIO) port", "55000", CLUSTER),
    EnvVar("TELA_CLUSTER_GATEWAY_PORT", "the cluster's routing gateway port", "58000", CLUSTER),
    EnvVar("TELA_CLUSTER_PARALLELISM", "Airflow [core] parallelism of the cluster", "6", CLUSTER),
    EnvVar("TELA_CLUSTER_DEFAULT_CONCURRENCY", "task slots of the cluster's default-queue Celery worker", "4", CLUSTER),
    EnvVar("TELA_CLUSTER_GPU_CONCURRENCY", "task slots of the cluster's gpu-queue Celery worker", "1", CLUSTER),
    EnvVar(
        "TELA_CLUSTER_HEARTBEAT_TIMEOUT",
        "seconds before the cluster's scheduler treats a silent task as a zombie",
        "60",
        CLUSTER,
    ),
    EnvVar(
        "TELA_GATEWAY_URL",
        "written to cluster.env: the cluster gateway's base URL, for scripts and tests",
        "set by make cluster",
        CLUSTER,
    ),
    EnvVar(
        "TELA_GATEWAY_API_KEY",
        "written to cluster.env: a client key of the cluster gateway, for scripts and tests",
        "set by make cluster",
        CLUSTER,
    ),
)
ENV_BY_NAME: dict[str, EnvVar] = {v.name: v for v in ENV_VARS}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _type(p: PipelineParam) -> str:
    t = f"{p.type} of {p.items}s" if p.items else p.type
    return f"{t} or null" if p.nullable else t


def _default(p: PipelineParam) -> str:
    if p.name == "source":
        return "the bundled demo prompts"  # a path on the machine that wrote the file: not a reference value
    return f"`{json.dumps(p.default)}`"


def _flag(p: PipelineParam) -> str:
    if not p.flag:
        return "(DAG only)"
    return f"`{p.flag}`" + (" (turns it off)" if p.type == "boolean" else "")


def markdown(enums: Mapping[str, Sequence[str]] | None = None) -> str:
    """docs/settings.md: the pipeline parameters, then the environment variables.
    `enums`: choices only the caller knows (the router registry's kinds)."""
    enums = dict(enums or {})
    out = [
        "# Settings reference",
        "",
        "Generated from the code by `scripts/settings_doc.py` (do not edit by hand; "
        "`tests/core/test_settings_doc.py` fails when it is out of date).",
        "",
        "## Pipeline parameters",
        "",
        "One table in `router_tasks/core/params.py` gives each parameter of a pipeline run: "
        "the `router_pipeline` DAG's trigger form (and the model pair and `use_gpu` of "
        "`router_retraining`), the flags of `tela pipeline`, and the settings the loop records "
        "with labels and champions (every parameter but `source` and `sample`).",
        "",
        "| name | type | default | `tela pipeline` flag | meaning |",
        "|---|---|---|---|---|",
    ]
    for p in TABLE:
        choices = enums.get(p.name, p.enum)
        meaning = p.help + (f" (one of: {', '.join(choices)})" if choices else "")
        out.append(f"| `{p.name}` | {_type(p)} | {_cell(_default(p))} | {_flag(p)} | {_cell(meaning)} |")
    out += [
        "",
        "## Environment variables",
        "",
        "Every `TELA_*` variable the code reads (`router_tasks/core/settings.py`).",
        "",
        "| variable | default | read by | meaning |",
        "|---|---|---|---|",
    ]
    for v in ENV_VARS:
        out.append(f"| `{v.name}` | {_cell(v.default)} | {_cell(v.scope)} | {_cell(v.meaning)} |")
    return "\n".join(out) + "\n"
