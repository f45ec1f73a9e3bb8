"""`tela evaluate --output DIR`: one benchmark, any protocol (holdout, transfer, cross-fit),
written as plain files. Above both `evaluate` and `crossfit`, so neither imports the other's
caller."""

from __future__ import annotations

import json
import logging

from router_tasks.core.schemas import finite_or_none
from router_tasks.core.stage import ArtifactRef, load_table, resolve_ref
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation.crossfit import crossfit_evaluate
from router_tasks.evaluation.evaluate import PROTOCOLS, evaluate_router
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.routers import resolve_router_key

log = logging.getLogger(__name__)


def evaluate_to_dir(
    router: str | dict,
    benchmark: str,
    protocol: str | None,
    output_dir: str,
    artifact_root: str | None = None,
    *,
    folds: int = 5,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
    quality_target: float = 0.95,
    prices: dict[str, float] | None = None,
) -> dict:
    """`tela evaluate --router R --benchmark B --protocol P --output DIR`, as a function.

    Runs (or reuses) the evaluate / crossfit artifact for one benchmark, then writes into
    `output_dir` (a folder or s3:// prefix): `metrics.json` (the artifact's report plus
    benchmark, protocol and artifact ref), `scores.parquet` (prompt, strong_win_rate, then
    prompt_id, both models' quality and, for cross-fit, fold) and `plot.png`.
    `router`: "champion", a train ref dict (or its JSON), key or URI. `protocol`:
    "transfer", "holdout", "crossfit", "leave-group-out", or None for the benchmark's own. Returns
    {"output_dir", "files", "artifact", "metrics"} (metrics: the data.parquet row).
    """
    bm.iter_benchmarks([benchmark])
    if protocol not in (None, "crossfit", "leave-group-out", *PROTOCOLS):
        raise ValueError(
            f"unknown protocol {protocol!r}; expected 'transfer', 'holdout', 'crossfit' or 'leave-group-out'"
        )
    store, key = resolve_router_key(router, ArtifactStore(artifact_root))
    router_ref = resolve_ref(key, store)  # artifacts go beside the router they evaluate
    if protocol in ("crossfit", "leave-group-out"):
        ref = crossfit_evaluate(
            router_ref,
            benchmark,
            folds=folds,
            num_results=num_results,
            random_seeds=random_seeds,
            max_prompts=max_prompts,
            artifact_root=store.root,
            protocol=protocol,
            quality_target=quality_target,
            prices=prices,
        )
    else:
        try:
            ref = evaluate_router(
                router_ref,
                benchmarks=[benchmark],
                num_results=num_results,
                random_seeds=random_seeds,
                max_prompts=max_prompts,
                artifact_root=store.root,
                protocol=protocol,
                own=False,
                quality_target=quality_target,
                prices=prices,
            )
        except LeakageError as e:
            raise LeakageError(f"{e} (protocol 'crossfit' retrains the router without each scored prompt)") from None
    akey = ArtifactRef.of(ref).key
    report = store.read_json(f"{akey}/metrics.json")
    row = load_table(ref, store).iloc[0]
    protocol_used = str(row["protocol"])
    report.update(benchmark=benchmark, protocol=protocol_used, artifact=ref)

    scores = store.read_parquet(f"{akey}/scores_{benchmark}.parquet")
    first = ["prompt", "strong_win_rate"]
    scores = scores[first + [c for c in scores.columns if c not in first]]
    out = ArtifactStore(output_dir)
    out.write_bytes("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode())
    out.write_parquet("scores.parquet", scores)
    out.write_bytes("plot.png", store.read_bytes(f"{akey}/plot_{benchmark}.png"))
    files = {name: out.uri(name) for name in ("metrics.json", "scores.parquet", "plot.png")}
    log.info(
        "%s on %s (%s): APGR %.3f, strong-model calls saved at 95%% of its quality %.3f -> %s",
        benchmark,
        router_ref["key"],
        protocol_used,
        row["apgr"],
        row["calls_saved_at_95"],
        out.uri(""),
    )
    metrics = {k: finite_or_none(v) for k, v in row.to_dict().items()}
    return {"output_dir": out.uri(""), "files": files, "artifact": ref, "metrics": metrics}
