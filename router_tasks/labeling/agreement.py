"""Judge agreement: how far the LLM judge agrees with exact match, where a gold answer says
who is right.

On a seeded sample of the run's exact-match rows (a model's answer to a prompt with a gold
answer, graded correct or not), the judge (or the panel, voting as in the judge stage)
grades the same answer by the same rubric, with the gold answer as its reference (the
dataset's own reference answer too, when it has one). A verdict of 4 or 5 ("correct in
substance") reads as "correct". The report (`agreement.json`, the manifest's stats):

- accuracy of that reading against exact match, Cohen's kappa (chance-corrected, so a
  judge that says "5" to everything scores 0 however many answers are right), and, where
  verdicts are distributions, the ROC AUC of the expected score for exact-match correctness;
- the confusion table (exact match correct / incorrect x verdict 1-5) and the 2x2 one;
- per model: exact-match rate, the judge's "correct" rate, accuracy and kappa; per judge
  of a panel: accuracy and kappa.

The sample is drawn by a salted hash of (prompt, model) (`seed`), so the same rows are
sampled in every run with the same data, and a larger sample holds the smaller one. The
judge's replies go through the request cache like the judge stage's. A data-quality rule
(`router_tasks.data.quality_suites.agreement_failures`) stops the run when agreement falls under
its threshold on enough rows; a run without gold answers (or `sample_size` 0) reports why
it measured nothing.
"""

from __future__ import annotations

import json
import logging
import time
import warnings

import numpy as np
import pandas as pd

from router_tasks.core.schemas import cell_text, finite_or_none
from router_tasks.core.stage import StageContext, run_stage, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import read_prompt_shard
from router_tasks.data.quality import DataQualityError, failure_report_prefix, format_failures, resolve_thresholds
from router_tasks.data.quality_suites import agreement_failures
from router_tasks.labeling.judge import check_vote, judge_config, judge_endpoints, verdict_judgement
from router_tasks.labeling.ledger import ledger_entry
from router_tasks.labeling.panel import ask_panel, panel_name, total_stats
from router_tasks.labeling.rubric import RUBRIC_VERSION, judge_messages

log = logging.getLogger(__name__)

STAGE = "judge_agreement"
STAGE_VERSION = "1"
REPORT_FILE = "agreement.json"
#: a verdict from this score up reads as "correct"
CORRECT_FROM = 4
SAMPLE_COLUMNS = [
    "prompt_id",
    "model",
    "correct",
    "score",
    "score_expected",
    "judge_correct",
    "verdict_method",
    "judge_votes",
    "failure_reason",
]


def sample_rows(judged: pd.DataFrame, size: int, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """(up to `size` graded exact-match rows, ordered by a salted hash; how many there were)."""
    rows = judged[(judged["method"] == "exact_match") & judged["correct"].notna() & judged["failure_reason"].isna()]
    order = [
        stable_hash(["judge-agreement", seed, str(p), str(m)])
        for p, m in zip(rows["prompt_id"], rows["model"], strict=False)
    ]
    picked = rows.assign(_order=order).sort_values("_order").head(max(0, int(size)))
    return picked.drop(columns="_order").reset_index(drop=True), len(rows)


def gold_reference(gold: str, gold_type: str, reference: str | None) -> str:
    """The judge's reference for a gold-graded row: the gold answer, in words."""
    said = (
        f"The correct choice is ({gold.strip().strip('().').upper()})."
        if gold_type == "letter"
        else f"The correct final answer is {gold.strip()}."
    )
    return f"{reference}\n\n{said}" if reference else said


def _kappa(exact: np.ndarray, judge: np.ndarray) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():  # both raters constant: undefined, reported as None
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(exact, judge)
    return finite_or_none(float(value))


def _rates(df: pd.DataFrame) -> dict:
    exact = df["correct"].astype(bool).to_numpy()
    judge = df["judge_correct"].astype(bool).to_numpy()
    return {
        "n": int(len(df)),
        "exact_match_rate": round(float(exact.mean()), 4) if len(df) else None,
        "judge_correct_rate": round(float(judge.mean()), 4) if len(df) else None,
        "accuracy": round(float((exact == judge).mean()), 4) if len(df) else None,
        "kappa": _kappa(exact, judge) if len(df) else None,
    }


def agreement_report(scored: pd.DataFrame, votes_by_judge: dict[str, pd.Series] | None = None) -> dict:
    """The agreement figures of sampled rows with a verdict (`correct`, `score`,
    `score_expected`, `judge_correct`, `model`)."""
    report = _rates(scored)
    confusion = {}
    for label, want in (("exact_correct", True), ("exact_incorrect", False)):
        part = scored.loc[scored["correct"].astype(bool) == want, "score"].astype(int)
        confusion[label] = {str(s): int((part == s).sum()) for s in range(1, 6)}
    report["confusion"] = confusion
    exact, judge = scored["correct"].astype(bool), scored["judge_correct"].astype(bool)
    report["binary"] = {
        "judge_correct_exact_correct": int((judge & exact).sum()),
        "judge_correct_exact_incorrect": int((judge & ~exact).sum()),
        "judge_incorrect_exact_correct": int((~judge & exact).sum()),
        "judge_incorrect_exact_incorrect": int((~judge & ~exact).sum()),
    }
    report["auc_expected_score"] = None
    if exact.nunique() == 2:
        from sklearn.metrics import roc_auc_score

        report["auc_expected_score"] = round(float(roc_auc_score(exact, scored["score_expected"].astype(float))), 4)
    report["by_model"] = {str(m): _rates(g) for m, g in scored.groupby("model", sort=True)}
    if votes_by_judge:
        report["by_judge"] = {}
        for name, scores in votes_by_judge.items():
            have = scores.notna()
            one = scored[have.to_numpy()].assign(judge_correct=scores[have].astype(int).to_numpy() >= CORRECT_FROM)
            report["by_judge"][name] = {k: v for k, v in _rates(one).items() if k in ("n", "accuracy", "kappa")}
    return report


def measure_judge_agreement(
    prompts: dict,
    answers: dict,
    judgements: dict,
    *,
    judge: dict | None = None,
    judges: list[dict] | None = None,
    vote: str = "majority",
    sample_size: int = 50,
    seed: int = 0,
    min_agreement: float | None = None,
    thresholds: dict | None = None,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
) -> dict:
    """The judge-vs-exact-match artifact of a run: the sampled rows (data.parquet), their
    figures (`agreement.json`, manifest stats). `min_agreement`: the accuracy under which the
    run stops (threshold `min_judge_agreement`; None: the configured one)."""
    endpoints = judge_endpoints(judge, judges)
    check_vote(vote)
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 0:
        raise ValueError(f"judge agreement sample_size must be an integer >= 0, got {sample_size!r}")
    overrides = dict(thresholds or {})
    if min_agreement is not None:
        overrides["min_judge_agreement"] = float(min_agreement)
    th = resolve_thresholds(overrides)
    config = {
        **judge_config(endpoints, vote),
        "sample_size": sample_size,
        "seed": seed,
        "correct_from": CORRECT_FROM,
        "thresholds": {k: th[k] for k in ("min_judge_agreement", "min_judge_kappa", "min_agreement_rows")},
    }

    def compute(ctx: StageContext) -> None:
        started = time.monotonic()
        judged = ctx.read_input("judgements")
        sample, eligible = sample_rows(judged, sample_size, seed)
        report: dict = {
            "sample_size": sample_size,
            "seed": seed,
            "eligible_rows": eligible,
            "judge": panel_name(endpoints, vote) if endpoints else None,
            "correct_from": CORRECT_FROM,
        }
        why = (
            "no LLM judge configured"
            if not endpoints
            else "sample_size is 0"
            if not sample_size
            else "no exact-match rows (no gold answers) in this run"
            if not eligible
            else None
        )
        rows, by_judge = [], {}
        if why is None:
            pdf = read_prompt_shard(ctx.inputs["prompts"], None, ctx.store).set_index("prompt_id")
            adf = ctx.read_input("answers").set_index(["prompt_id", "model"])
            convs = []
            for r in sample.itertuples(index=False):
                p = pdf.loc[r.prompt_id]
                ref = gold_reference(str(p["gold_answer"]), str(p["gold_type"]), cell_text(p.get("reference_answer")))
                convs.append(judge_messages(str(p["prompt"]), ref, str(adf.loc[(r.prompt_id, r.model), "answer"])))
            outcomes, by_judge = ask_panel(
                endpoints,
                convs,
                how=vote,
                prompt_version=RUBRIC_VERSION,
                store=ctx.store,
                label=STAGE,
                max_failure_rate=max_failure_rate,
            )
            for r, outcome in zip(sample.itertuples(index=False), outcomes, strict=False):
                j = verdict_judgement(r.prompt_id, r.model, outcome, endpoints, vote)
                rows.append(
                    {
                        **j,
                        "correct": bool(r.correct),
                        "judge_correct": None if j["score"] is None else j["score"] >= CORRECT_FROM,
                    }
                )
        table = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
        table = table.astype(
            {
                "prompt_id": "string",
                "model": "string",
                "correct": "boolean",
                "score": "Int64",
                "score_expected": "Float64",
                "judge_correct": "boolean",
                "verdict_method": "string",
                "judge_votes": "string",
                "failure_reason": "string",
            }
        )
        scored = table[table["score"].notna()]
        errors = int(table["failure_reason"].fillna("").str.startswith("judge error").sum())
        report.update(sampled=len(table), judge_errors=errors, no_verdict=int(table["score"].isna().sum()) - errors)
        if why is not None:
            report.update(skipped=why, n=0)
        else:
            votes = None
            if len(endpoints) > 1:
                per = [json.loads(v) if isinstance(v, str) else {} for v in scored["judge_votes"]]
                votes = {e.name: pd.Series([d.get(e.name) for d in per], dtype="Float64") for e in endpoints}
            report.update(agreement_report(scored.reset_index(drop=True), votes))
        data = json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode()
        failures = agreement_failures(report, th)
        if failures:
            prefix = failure_report_prefix(ctx.key)
            ctx.store.write_bytes(f"{prefix}/{REPORT_FILE}", data)
            ctx.store.write_parquet(f"{prefix}/sample.parquet", table)
            where = ctx.store.uri(f"{prefix}/{REPORT_FILE}")
            raise DataQualityError(
                format_failures(f"judge agreement in stage {STAGE} ({where})", failures),
                failures,
                data_docs=where,
                stage=STAGE,
                kind="judge_agreement",
            )
        ctx.write_file(REPORT_FILE, data)
        ctx.write_table(table)
        ctx.mark_incomplete(errors, "judge calls failed; asked again on the next run")
        totals = total_stats(by_judge)
        ctx.stats.update(
            {
                **{k: totals.get(k, 0) for k in ("requests", "cached", "calls", "failures")},
                "dollars": round(totals.get("dollars", 0.0), 6),
                "agreement": {
                    k: report.get(k)
                    for k in (
                        "n",
                        "accuracy",
                        "kappa",
                        "auc_expected_score",
                        "sampled",
                        "eligible_rows",
                        "skipped",
                        "judge",
                    )
                },
                "report": ctx.uri(REPORT_FILE),
                "ledger": {name: ledger_entry([(stats, False)]) for name, stats in by_judge.items()},
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        log.info("%s: %s", STAGE, ctx.stats["agreement"])

    return run_stage(
        STAGE,
        STAGE_VERSION,
        compute,
        inputs={"prompts": prompts, "answers": answers, "judgements": judgements},
        config=config,
        store=ArtifactStore(artifact_root),
    )


def agreement_markdown(report: dict) -> list[str]:
    """The run summary's lines for an agreement report."""
    if report.get("skipped"):
        return [f"Judge agreement with exact match: not measured ({report['skipped']})."]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"Judge agreement with exact match ({report['judge']}, {report['n']} of {report['sampled']} sampled "
        f"gold-graded answers with a verdict; a verdict >= {report['correct_from']} reads as correct): "
        f"accuracy {f(report.get('accuracy'))}, Cohen's kappa {f(report.get('kappa'))}, "
        f"AUC of the expected score {f(report.get('auc_expected_score'))}.",
        "",
        "| exact match | verdict 1 | 2 | 3 | 4 | 5 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, counts in report["confusion"].items():
        lines.append(
            f"| {label.removeprefix('exact_')} | " + " | ".join(str(counts[str(s)]) for s in range(1, 6)) + " |"
        )
    lines += [
        "",
        "| model | rows | exact-match rate | judge 'correct' rate | accuracy | kappa |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model, r in report["by_model"].items():
        lines.append(
            f"| {model} | {r['n']} | {f(r['exact_match_rate'])} | {f(r['judge_correct_rate'])} | "
            f"{f(r['accuracy'])} | {f(r['kappa'])} |"
        )
    for name, r in (report.get("by_judge") or {}).items():
        lines.append(f"- judge {name}: {r['n']} verdicts, accuracy {f(r['accuracy'])}, kappa {f(r['kappa'])}")
    return lines
