"""Drift: does the latest traffic still look like what the champion was trained on?

Three checks on one traffic window against the champion's training prompts (the prompts
of its labels artifact listed in train_prompts.parquet):

1. Embedding drift: MMD (RBF kernel, median-heuristic bandwidth) between MiniLM
   embeddings of a sample of the window and of the training prompts, with a permutation
   test. Why MMD and not a domain classifier's AUC: the permutation test gives an exact
   p-value under "same distribution" with no model to fit or tune, so the false-alarm rate
   is the chosen alpha by construction (the classifier needs held-out folds and its AUC
   has no calibrated null on ~100-prompt windows); all permutations are one matrix product.
2. Far share: the share of window prompts whose nearest training prompt is less similar
   than the 5th percentile of training prompts' leave-one-out nearest-neighbour
   similarity. In distribution ~5%; a binomial test flags a larger share. This catches a
   new kind of prompt that is a small part of the window, which MMD can dilute.
3. Strong-share drift: the share of the window's routed prompts whose score clears the
   calibrated threshold, against the calibration's target share (binomial test + a
   tolerance). The router may be fine while the mix of hard and easy prompts moved: then
   recalibrating the threshold, not retraining, is the fix.

`drift_report` writes the figures and a plot as a `drift` stage artifact (idempotent: the
key is the router and the window's content). `drift_decision` applies hysteresis and a
cooldown over a small state file (`drift/state.json`) and says what to do: retrain
(emit the drift Asset event with the evidence), recalibrate, or nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from router_tasks.core import defaults
from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import resolve_ref, run_stage, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.calibration import calibrate_router
from router_tasks.routers import resolve_router_key
from router_tasks.routers.embeddings import Embedder
from router_tasks.serving.decisions import latest_calibration
from router_tasks.serving.traffic import export_window, latest_window, read_window

log = logging.getLogger(__name__)

STAGE = "drift"
STAGE_VERSION = "1"
STATE_KEY = "drift/state.json"
REPORT_FILE = "report.json"
PLOT_FILE = "drift.png"

DEFAULTS = {
    "alpha": 0.01,  # p-value that enters the drift state (per check)
    "alpha_clear": 0.10,  # every p-value above this counts as a clear window
    "clear_windows": 3,  # clear windows in a row that leave the drift state (hysteresis)
    "cooldown_hours": 24.0,  # no second retraining event within this
    "min_prompts": 30,  # fewer in the window: no verdict
    "max_sample": 400,  # prompts per side in the MMD test
    "permutations": 500,
    "far_quantile": 0.05,
    "far_min_share": 0.15,  # a far-share flag also needs at least this share
    "share_tolerance": 0.10,  # strong share may move this much before it counts
    "seed": 0,
    "plot": True,  # drift.png beside report.json (off: report only, for many-window studies)
}


# ---- statistics ---------------------------------------------------------------------------


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> dict:
    """Biased MMD^2 of samples x (n, d) and y (m, d) with an RBF kernel, and its
    permutation p-value ((1 + #perm >= observed) / (1 + permutations))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.vstack([x, y])
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    off = sq[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(off)) if len(off) else 1.0
    k = np.exp(-sq / max(bandwidth, 1e-12))
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    w = np.empty((len(z), permutations + 1))
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    w[:, 0] = base
    for p in range(1, permutations + 1):
        w[:, p] = base[rng.permutation(len(z))]
    stats = np.einsum("ip,ip->p", w, k @ w)
    observed = float(stats[0])
    p_value = float((1 + (stats[1:] >= observed - 1e-15).sum()) / (1 + permutations))
    return {"mmd2": observed, "p_value": p_value, "bandwidth": bandwidth, "null_mmd2": stats[1:].tolist()}


def nearest_similarity(queries: np.ndarray, reference: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """Cosine similarity of each query to its nearest reference row (unit-length rows)."""
    out = np.empty(len(queries))
    for start in range(0, len(queries), 1024):
        s = queries[start : start + 1024] @ reference.T
        if leave_one_out:
            idx = np.arange(start, start + len(s))
            s[np.arange(len(s)), idx] = -np.inf
        out[start : start + len(s)] = s.max(axis=1)
    return out


def binom_greater(k: int, n: int, p: float) -> float:
    from scipy.stats import binomtest

    return float(binomtest(int(k), int(n), float(p), alternative="greater").pvalue) if n else 1.0


def binom_two_sided(k: int, n: int, p: float) -> float:
    from scipy.stats import binomtest

    return float(binomtest(int(k), int(n), float(p)).pvalue) if n else 1.0


# ---- inputs -------------------------------------------------------------------------------


def training_prompts(store: ArtifactStore, router_key: str) -> list[str]:
    """The texts the router at `router_key` was trained on (its labels artifact, filtered
    to train_prompts.parquet)."""
    meta = store.read_json(f"{router_key}/router.json")
    labels_key = (meta.get("training_data") or {}).get("labels_key")
    if not labels_key:
        raise ValueError(f"{store.uri(router_key)}: router.json names no labels artifact (training_data.labels_key)")
    labels = store.read_parquet(f"{labels_key}/data.parquet")
    ids = set(store.read_parquet(f"{router_key}/train_prompts.parquet")["prompt_id"].astype(str))
    rows = labels[labels["prompt_id"].astype(str).isin(ids)].drop_duplicates("prompt_id")
    return rows["prompt"].astype(str).tolist()


def _calibration(store: ArtifactStore, router_key: str) -> dict | None:

    found = latest_calibration(store, router_key)
    return None if found is None else {"key": found[0], **found[1]}


# ---- the report ---------------------------------------------------------------------------


def drift_report(
    traffic: pd.DataFrame,
    *,
    router: str | dict = "champion",
    window: tuple[str, str] | None = None,
    settings: dict | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Compare a window of the traffic log (`traffic.read_window`) with the router's
    training prompts; returns the ref of a `drift` artifact (report.json, drift.png,
    data.parquet with one row per window prompt: prompt_id, nearest_similarity, far)."""

    cfg = {**DEFAULTS, **(settings or {})}
    unknown = sorted(set(settings or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"drift settings: unknown {unknown}; expected some of {sorted(DEFAULTS)}")
    store, router_key = resolve_router_key(router, ArtifactStore(artifact_root))
    router_ref = resolve_ref(router_key, store)
    texts = traffic[traffic["prompt"].notna()]["prompt"].astype(str).tolist() if len(traffic) else []
    # the strong share is this router's: rows an earlier champion scored say nothing about it
    mine = traffic[traffic["router_key"] == router_key] if "router_key" in traffic else traffic.iloc[:0]
    scores = mine["score"].dropna().to_numpy(float) if len(mine) else np.array([])
    window = [str(w) for w in window] if window else None
    config = {"settings": cfg, "window": window, "traffic_sha": stable_hash([texts, scores.round(9).tolist()], 32)}

    def compute(ctx) -> None:

        rng = np.random.default_rng(cfg["seed"])
        reference = training_prompts(ctx.store, router_key)
        report = {
            "router": router_ref,
            "window": window,
            "n_traffic": len(traffic),
            "n_prompts": len(texts),
            "n_reference": len(reference),
            "settings": cfg,
            "checks": {},
        }
        per_prompt = pd.DataFrame(
            {
                "prompt_id": pd.Series([], dtype="string"),
                "nearest_similarity": pd.Series([], dtype="float64"),
                "far": pd.Series([], dtype="bool"),
            }
        )
        plot = {}
        if len(texts) < cfg["min_prompts"]:
            report["verdict"] = "insufficient"
            report["reason"] = f"{len(texts)} prompts with text in the window; need {cfg['min_prompts']}"
        else:
            embed = Embedder(ctx.store)
            ref_emb, win_emb = embed(reference), embed(texts)
            take = lambda e: (
                e[rng.choice(len(e), cfg["max_sample"], replace=False)] if len(e) > cfg["max_sample"] else e
            )  # noqa: E731
            mmd = mmd_permutation_test(take(win_emb), take(ref_emb), cfg["permutations"], cfg["seed"])
            report["checks"]["embedding"] = {k: v for k, v in mmd.items() if k != "null_mmd2"} | {
                "flag": mmd["p_value"] < cfg["alpha"]
            }
            loo = nearest_similarity(ref_emb, ref_emb, leave_one_out=True)
            tau = float(np.quantile(loo, cfg["far_quantile"]))
            near = nearest_similarity(win_emb, ref_emb)
            far = near < tau
            p_far = binom_greater(int(far.sum()), len(far), cfg["far_quantile"])
            report["checks"]["far"] = {
                "threshold_similarity": tau,
                "share": float(far.mean()),
                "expected_share": cfg["far_quantile"],
                "p_value": p_far,
                "flag": p_far < cfg["alpha"] and far.mean() >= cfg["far_min_share"],
            }

            per_prompt = pd.DataFrame(
                {
                    "prompt_id": pd.array([prompt_id(t) for t in texts], dtype="string"),
                    "nearest_similarity": near,
                    "far": far,
                }
            )
            plot = {"null": mmd["null_mmd2"], "mmd2": mmd["mmd2"], "loo": loo, "near": near, "tau": tau}
        cal = _calibration(ctx.store, router_key)
        if cal is not None and len(scores) >= cfg["min_prompts"]:
            strong = int((scores >= cal["threshold"]).sum())
            share, target = strong / len(scores), float(cal["target_strong_share"])
            p_share = binom_two_sided(strong, len(scores), min(max(target, 1e-9), 1 - 1e-9))
            report["checks"]["strong_share"] = {
                "share": share,
                "target": target,
                "threshold": cal["threshold"],
                "calibration": cal["key"],
                "n_scored": int(len(scores)),
                "p_value": p_share,
                "flag": p_share < cfg["alpha"] and abs(share - target) > cfg["share_tolerance"],
            }
        checks = report["checks"]
        if "verdict" not in report:
            content = any(checks.get(c, {}).get("flag") for c in ("embedding", "far"))
            report["verdict"] = (
                "drift" if content else ("share_drift" if checks.get("strong_share", {}).get("flag") else "ok")
            )
        report["clear"] = report["verdict"] == "ok" and all(
            c.get("p_value", 1.0) > cfg["alpha_clear"] for c in checks.values()
        )
        ctx.write_file(REPORT_FILE, json.dumps(report, indent=2, sort_keys=True, default=float).encode())
        if cfg["plot"]:
            ctx.write_file(PLOT_FILE, _plot(report, plot))
        ctx.write_table(per_prompt)
        ctx.stats.update(verdict=report["verdict"], n_prompts=len(texts))
        log.info(
            "drift report for %s over %s: %s %s",
            router_key,
            window,
            report["verdict"],
            {
                k: {kk: round(vv, 4) for kk, vv in v.items() if kk in ("p_value", "share", "mmd2")}
                for k, v in checks.items()
            },
        )

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"router": router_ref}, config=config, store=store)


def read_report(ref, artifact_root: str | None = None) -> dict:
    store = ArtifactStore(artifact_root)
    r = resolve_ref(ref, store)
    return store.read_json(f"{r['key']}/{REPORT_FILE}")


def _plot(report: dict, data: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    checks = report["checks"]
    if data:
        ax = axes[0]
        ax.hist(data["null"], bins=40, color="#bbb", label="permutations")
        ax.axvline(data["mmd2"], color="#c33", label=f"window (p={checks['embedding']['p_value']:.3g})")
        ax.set_title("embedding MMD$^2$"), ax.legend(fontsize=8)
        ax = axes[1]
        bins = np.linspace(min(data["loo"].min(), data["near"].min()), 1, 40)
        ax.hist(data["loo"], bins=bins, alpha=0.5, density=True, label="training (leave-one-out)")
        ax.hist(data["near"], bins=bins, alpha=0.5, density=True, label="window")
        ax.axvline(data["tau"], color="#c33", ls="--", label=f"far: {checks['far']['share']:.0%}")
        ax.set_title("similarity to nearest training prompt"), ax.legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, report.get("reason", "no data"), ha="center", wrap=True)
        axes[0].axis("off"), axes[1].axis("off")
    ax = axes[2]
    if "strong_share" in checks:
        s = checks["strong_share"]
        ax.bar(["target", "window"], [s["target"], s["share"]], color=["#888", "#36c"])
        ax.set_ylim(0, 1), ax.set_title(f"strong share (p={s['p_value']:.3g})")
    else:
        ax.text(0.5, 0.5, "strong share: no calibration\nor too few scored prompts", ha="center")
        ax.axis("off")
    fig.suptitle(f"drift: {report['verdict']}  window {report.get('window')}", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.82, wspace=0.25)  # tight_layout is slow
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


# ---- the decision -------------------------------------------------------------------------


def drift_decision(report_ref, *, artifact_root: str | None = None, now=None) -> dict:
    """What to do about a drift report, with hysteresis and a cooldown kept in
    `drift/state.json`: {"action": "retrain" | "recalibrate" | "none", "evidence": ...}.

    Enters the drift state on a `drift` verdict; leaves it after `clear_windows` clear
    windows in a row. A retraining event goes out on entering the state, and again while
    in it only once `cooldown_hours` have passed since the last one. A new champion
    starts a fresh state (it was trained on other prompts).
    """
    store = ArtifactStore(artifact_root)
    ref = resolve_ref(report_ref, store)
    report = store.read_json(f"{ref['key']}/{REPORT_FILE}")
    cfg = report["settings"]
    now = now or datetime.now(UTC)
    state = store.read_json(STATE_KEY) if store.exists(STATE_KEY) else {}
    router_key = report["router"]["key"]
    if state.get("router_key") != router_key:
        state = {"router_key": router_key, "in_drift": False, "clear_in_row": 0, "last_event_at": None}
    action, why = "none", report["verdict"]
    if report["verdict"] == "drift":
        state["clear_in_row"] = 0
        last = state.get("last_event_at")
        cooled = last is None or now - datetime.fromisoformat(last) >= timedelta(hours=cfg["cooldown_hours"])
        if not state["in_drift"] or cooled:
            if cooled:
                action, why = "retrain", "drift entered" if not state["in_drift"] else "still drifting after cooldown"
                state["last_event_at"] = now.isoformat()
            else:
                why = "drift, but a retraining event went out less than cooldown_hours ago"
        else:
            why = "still drifting; event already sent (cooldown)"
        state["in_drift"] = True
    elif report["verdict"] == "share_drift" and not state["in_drift"]:
        action, why = "recalibrate", "strong share moved; prompts did not"
    elif report.get("clear"):
        state["clear_in_row"] = state.get("clear_in_row", 0) + 1
        if state["in_drift"] and state["clear_in_row"] >= cfg["clear_windows"]:
            state["in_drift"], why = False, f"{state['clear_in_row']} clear windows: drift over"
    else:
        state["clear_in_row"] = 0  # ambiguous window: neither flags nor clears
    state["last_report"] = ref["key"]
    state["updated_at"] = now.isoformat()
    store.write_json(STATE_KEY, state)
    evidence = {
        "report": ref,
        "window": report.get("window"),
        "verdict": report["verdict"],
        "checks": report["checks"],
        "router": report["router"],
        "n_prompts": report["n_prompts"],
        "plot": store.uri(f"{ref['key']}/{PLOT_FILE}"),
    }
    log.info("drift decision: %s (%s)", action, why)
    return {"action": action, "reason": why, "in_drift": state["in_drift"], "evidence": evidence}


def recalibrate_on_traffic(
    traffic: pd.DataFrame,
    router: str | dict = "champion",
    *,
    target_share: float | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Strong-share drift alone: a new calibration of the router on the window's prompts,
    at the old target share; the gateway picks it up on its next reload."""

    store, key = resolve_router_key(router, ArtifactStore(artifact_root))
    if target_share is None:
        cal = _calibration(store, key)
        if cal is None:
            raise ValueError(f"router {key} has no calibration, so no target strong share to keep")
        target_share = float(cal["target_strong_share"])
    texts = traffic[traffic["prompt"].notna()]["prompt"].astype(str).tolist()
    if not texts:
        raise ValueError("no prompt text in the traffic window to recalibrate on")
    return calibrate_router(key, texts, target_share, artifact_root=store.root)


# ---- what the DAG calls -------------------------------------------------------------------

DRIFT_ASSET_NAME = defaults.DRIFT_ASSET_NAME  # the Asset router_drift emits (plugins/tela_assets.py)
DRIFT_ASSET_URI = defaults.DRIFT_ASSET_URI


def check_latest_window(
    *,
    window_end=None,
    hours: float = 1.0,
    router: str | dict = "champion",
    settings: dict | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Report on the traffic of the `hours` before `window_end` (default now) and decide;
    returns the decision (see `drift_decision`) with the report ref and window in it."""

    store = ArtifactStore(artifact_root)
    start, end = latest_window(store, hours, window_end)
    traffic = read_window(store, start, end)
    ref = drift_report(
        traffic,
        router=router,
        window=(start.isoformat(), end.isoformat()),
        settings=settings,
        artifact_root=artifact_root,
    )
    decision = drift_decision(ref, artifact_root=artifact_root, now=end)
    decision["window"] = [start.isoformat(), end.isoformat()]
    return decision


def relabel_request(evidence: dict, *, sample: int = 200, seed: int = 0, artifact_root: str | None = None) -> dict:
    """The labeling run a drift event asks for: the window's prompts exported as a prompts
    file (the `source` router_pipeline ingests), and the evidence it answers."""

    window = evidence.get("window")
    if not window or len(window) != 2:
        raise ValueError(f"drift evidence has no traffic window: {sorted(evidence)}")
    source = export_window(ArtifactStore(artifact_root), window[0], window[1], sample=sample, seed=seed)
    return {"source": source, "window": window, "report": evidence.get("report"), "sample": sample}
