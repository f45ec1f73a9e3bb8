"""Run summary: per stage rows in/out, computed vs reused, time, and the champion's metrics.

Built from the manifests the stages wrote, so it tells the truth about what was stored.
"""

from __future__ import annotations

import json

from router_tasks.core.stage import ArtifactRef, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.agreement import REPORT_FILE, agreement_markdown

STAT_KEYS = (
    "requests",
    "api_calls",
    "failures",
    "parse_failures",
    "duplicates_dropped",
    "judgements_without_verdict",
    "quarantined",
)


def _rows_in(manifest: dict) -> str:
    # The largest input is the one the stage works through (e.g. the prompts a judge
    # grades, not the same rows again as answers).
    counts = [v for v in manifest.get("rows_in", {}).values() if v is not None]
    return str(max(counts)) if counts else "-"


def _seconds(manifest: dict) -> float:
    """A stage's own time plus that of the parts it computed this time (generate does its
    work in one `generate_model` artifact per shard and model, often as mapped tasks)."""
    return manifest["seconds"] + float(manifest.get("stats", {}).get("part_seconds", 0.0))


def summarize_run(
    stages: dict, decision: dict | None = None, *, run_id: str = "manual", artifact_root: str | None = None
) -> str:
    """Markdown summary of a run; also stored at `runs/<run_id>/summary.md` and `runs/latest.md`."""
    store = ArtifactStore(artifact_root)
    lines = [
        f"# Tela Wizard run `{run_id}`",
        "",
        f"Artifacts: `{store.root}`",
        "",
        "| stage | rows in | rows out | work | seconds | notes |",
        "|---|---:|---:|---|---:|---|",
    ]
    quality_lines, judge_lines = [], []
    stages = dict(stages)
    ledger = stages.pop("ledger", None)  # not a row of the stage table: its own section below
    seen: dict[str, str] = {}  # artifact key -> the stage row that showed it
    for name, ref in stages.items():
        if ref is None:
            continue
        ref = ArtifactRef.of(ref)
        if ref.key in seen:  # a stage with nothing to do hands its input on (references)
            lines.append(f"| {name} | - | - | nothing to do | - | passed on the {seen[ref.key]} artifact |")
            continue
        seen[ref.key] = name
        m = read_manifest(store, ref)
        stats = m.get("stats", {})
        for kind, q in (stats.get("quality") or {}).items():  # written by router_tasks.data.quality.enforce
            line = (
                f"- {name} / {kind}: {q.get('rules_checked')} rules, "
                f"{q.get('rows_kept')} of {q.get('rows_checked')} rows kept"
            )
            if q.get("quarantine"):
                line += f", {q.get('rows_quarantined')} quarantined (`{q['quarantine']}`)"
            quality_lines.append(line + f"; Data Docs: `{q.get('data_docs')}`")
        notes = ", ".join(f"{k}={stats[k]}" for k in STAT_KEYS if k in stats and not isinstance(stats[k], dict))
        if stats.get("verdicts_by_method") is not None:  # the judge: how its verdicts were read
            judge_lines.append(_verdict_line(stats))
        if name == "agreement" and store.exists(f"{ref.key}/{REPORT_FILE}"):
            judge_lines += agreement_markdown(json.loads(store.read_bytes(f"{ref.key}/{REPORT_FILE}")))
        if ref.reused:  # nothing ran now: the time and counters are those of the run that computed it
            work, seconds = "reused", "-"
            notes = f"when computed ({_seconds(m):.1f} s): {notes}" if notes else f"computed in {_seconds(m):.1f} s"
        else:
            work, seconds = "computed", f"{_seconds(m):.1f}"
        lines.append(f"| {name} | {_rows_in(m)} | {m.get('rows_out', '-')} | {work} | {seconds} | {notes} |")
    lines.append("")
    if quality_lines:
        lines += ["Data quality:", *quality_lines, ""]
    if judge_lines:
        lines += [*judge_lines, ""]
    if ledger is not None:
        ledger = ArtifactRef.of(ledger)
        lines += [
            "Cost ledger (LLM calls; `now` = spent by this run, the rest = when the artifact was computed):",
            "",
            store.read_bytes(f"{ledger.key}/ledger.md").decode().rstrip(),
            "",
        ]
    if decision:
        verdict = "promoted to champion" if decision["promoted"] else "not promoted"
        lines += [f"Router `{decision['router']['key']}`: {verdict} ({decision['reason']}).", ""]
        lines += [
            "| benchmark | protocol | prompts | APGR | CPT(50%) | CPT(80%) | strong-model calls saved at 95% of "
            "its quality (exact curve in brackets) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in decision.get("per_benchmark", []):
            lines.append(
                f"| {row.get('benchmark')} | {row.get('protocol', '-')} | {row.get('n_prompts', '-')} | "
                f"{_fmt(row.get('apgr'))} | {_fmt(row.get('cpt50'), pct=True)} | {_fmt(row.get('cpt80'), pct=True)} | "
                f"{_fmt(row.get('calls_saved_at_95'), pct=True)} "
                f"({_fmt(row.get('calls_saved_at_95_exact'), pct=True)}) |"
            )
        lines.append("")
        lines.append(f"Champion score ({decision['metric']}): {decision['score']:.4f}")
        eval_ref = decision.get("evaluation")
        if eval_ref:
            lines.append(
                f"Evaluation report (tables, plots, protocol, fingerprints): `{ArtifactRef.of(eval_ref).uri}/report.md`"
            )
    text = "\n".join(lines) + "\n"
    store.write_bytes(f"runs/{run_id.replace(':', '-').replace('+', '_')}/summary.md", text.encode())
    store.write_bytes("runs/latest.md", text.encode())
    return text


def _verdict_line(stats: dict) -> str:
    """How many LLM-judged answers got a verdict, and how it was read."""
    methods = stats.get("verdicts_by_method") or {}
    judged = int(stats.get("llm_judge", 0)) - int(stats.get("request_errors", 0))
    read = ", ".join(f"{n} from {m}" for m, n in sorted(methods.items())) or "none"
    who = stats.get("judge_model") or "-"
    return (
        f"Judge verdicts ({who}): {sum(methods.values())} of {judged} judged answers have one ({read}); "
        f"parse failures {stats.get('parse_failures', 0)}, request errors {stats.get('request_errors', 0)}."
    )


def _fmt(value, pct: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"
