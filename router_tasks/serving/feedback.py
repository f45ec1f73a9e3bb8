"""User feedback: `POST /v1/feedback {"id", "score": 1-5, "comment"?}` and the labels it
becomes.

The gateway stores each rating in the feedback log, beside the traffic log and written the
same way (Parquet segments, by a background thread):

    feedback/<YYYY-MM-DD>/<HHMMSS>-<uuid>.parquet   time, completion_id, key_name, score, comment

A rating names a chat completion by the `id` its reply carried, which the traffic log
holds (`completion_id`) with the key's name, the prompt and the model that answered. The
join happens when the pipeline reads a traffic window (`feedback_labels`), not on the
request's path: any gateway process or replica may have served the completion, and its
row may not be written yet. A rating counts only when the key that sends it is the key
the completion was served to (so one client cannot rate another's answers); the latest
rating of a completion wins.

A window's ratings become labels for the model that answered, on the judge's 1-5 scale
(quality (score - 1) / 4), `source` "feedback:<key name>" (`feedback:anonymous` without
keys), next to the judge's labels of the same prompts: `feedback_labels_stage` writes
them as an artifact, keyed by their content, that the labels stage adds.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd

from router_tasks.core.schemas import LABEL_COLUMNS
from router_tasks.core.stage import run_stage, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.serving.parsing import ApiError
from router_tasks.serving.traffic import SCHEME, SegmentLog, parse_window, read_window, typed_frame

log = logging.getLogger(__name__)

PREFIX = "feedback"
COLUMNS = {
    "time": "datetime64[us, UTC]",
    "completion_id": "string",
    "key_name": "string",
    "score": "Int64",
    "comment": "string",
}
FIELDS = {"id", "score", "comment"}
MAX_ID_CHARS = 256
MAX_COMMENT_CHARS = 4000
#: ratings of a window's completions are read up to this long after the window ends
GRACE = timedelta(days=7)
SOURCE_PREFIX = "feedback:"
STAGE = "feedback_labels"
STAGE_VERSION = "1"


def parse_feedback(body) -> tuple[str, int, str | None]:
    """(completion id, score, comment) of a feedback body; ApiError 400 naming the field."""
    if not isinstance(body, dict):
        raise ApiError(
            400,
            'the request body must be a JSON object: {"id": "<chat completion id>", "score": 1-5, "comment": "..."}',
        )
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; feedback takes id, score and comment", param=unknown[0])
    cid = body.get("id")
    if not isinstance(cid, str) or not cid.strip() or len(cid) > MAX_ID_CHARS:
        raise ApiError(
            400,
            f"'id' must be the chat completion id a reply carried (a string of 1-{MAX_ID_CHARS} characters)",
            param="id",
        )
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise ApiError(
            400, f"'score' must be an integer from 1 (bad) to 5 (excellent), got {score!r:.40}", param="score"
        )
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise ApiError(400, f"'comment' must be a string of at most {MAX_COMMENT_CHARS} characters", param="comment")
    return cid.strip(), score, comment


class FeedbackLog(SegmentLog):
    """The feedback log; `keep_comments=False` (the gateway's --no-prompt-log) stores no comment text."""

    def __init__(self, store: ArtifactStore, *, keep_comments: bool = True, flush_s: float = 10.0):
        self.keep_comments = keep_comments
        super().__init__(store, PREFIX, self._to_frame, flush_rows=200, flush_s=flush_s, name="tela-feedback-log")

    def record(self, completion_id: str, key_name: str | None, score: int, comment: str | None) -> None:
        self.append(
            {
                "completion_id": completion_id,
                "key_name": key_name,
                "score": score,
                "comment": comment if self.keep_comments else None,
            }
        )

    @staticmethod
    def _to_frame(rows: list[dict]) -> pd.DataFrame:
        return typed_frame(rows, COLUMNS)


def read_feedback(store: ArtifactStore, start, end) -> pd.DataFrame:
    """Every rating given with start <= time < end, oldest first."""
    frames, day = [], start.date()
    while day <= end.date():
        for key in store.list(f"{PREFIX}/{day:%Y-%m-%d}/"):
            if key.endswith(".parquet"):
                frames.append(store.read_parquet(key))
        day += timedelta(days=1)
    if not frames:
        return typed_frame([], COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["time"] >= start) & (df["time"] < end)]
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def feedback_labels(store: ArtifactStore, start, end, *, now=None) -> tuple[pd.DataFrame, dict]:
    """(labels, counts) from the ratings of completions served in [start, end).

    Labels have LABEL_COLUMNS plus category "traffic"; one row per (prompt, model, key),
    the mean of its ratings. Counts say what was dropped and why."""
    now = now or datetime.now(UTC)
    traffic = read_window(store, start, end)
    if "completion_id" not in traffic:
        traffic["completion_id"], traffic["key_name"] = pd.NA, pd.NA
    served = traffic[(traffic["status"] == 200) & traffic["completion_id"].notna()]
    served = served.assign(key=served["key_name"].fillna("")).drop_duplicates(["completion_id", "key"], keep="last")
    ratings = read_feedback(store, start, min(now, end + GRACE) + timedelta(microseconds=1))
    ratings = ratings.assign(key=ratings["key_name"].fillna(""))
    ratings = ratings.drop_duplicates(["completion_id", "key"], keep="last")
    joined = ratings.merge(
        served[["completion_id", "key", "prompt_id", "prompt", "model"]], on=["completion_id", "key"], how="inner"
    )
    counts = {
        "ratings": len(ratings),
        "matched": len(joined),
        "unmatched": len(ratings) - len(joined),
        "without_prompt_text": int(joined["prompt"].isna().sum()),
    }
    joined = joined[joined["prompt"].notna()]
    if joined.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LABEL_COLUMNS + ["category"]}), counts
    joined = joined.assign(
        source=SOURCE_PREFIX + joined["key"].replace("", "anonymous"),
        quality=(joined["score"].astype("float64") - 1.0) / 4.0,
    )
    agg = (
        joined.groupby(["prompt_id", "model", "source"], sort=True)
        .agg(prompt=("prompt", "first"), quality=("quality", "mean"))
        .reset_index()
    )
    out = pd.DataFrame(
        {
            "prompt_id": agg["prompt_id"].astype("string"),
            "prompt": agg["prompt"].astype("string"),
            "model": agg["model"].astype("string"),
            "score": (agg["quality"] * 4.0 + 1.0).round().astype("Int64"),
            "correct": pd.array([pd.NA] * len(agg), dtype="boolean"),
            "quality": agg["quality"].astype("Float64"),
            "source": agg["source"].astype("string"),
            "benchmark": pd.array(["traffic"] * len(agg), dtype="string"),
            "category": pd.array(["traffic"] * len(agg), dtype="string"),
        }
    )
    counts["labels"] = len(out)
    return out, counts


def feedback_labels_stage(source: str | None, artifact_root: str | None = None) -> dict | None:
    """The feedback of a `traffic://<from>/<to>` source as a labels artifact (keyed by its
    content: more ratings make a new one, the same ratings reuse it); None for any other
    source or a window nobody rated."""
    if not isinstance(source, str) or not source.startswith(SCHEME):
        return None
    store = ArtifactStore(artifact_root)
    start, end = parse_window(source)
    labels, counts = feedback_labels(store, start, end)
    log.info("feedback for %s: %s", source, counts)
    if labels.empty:
        return None
    digest = stable_hash(labels.astype(str).to_dict(orient="split"), length=24)

    def compute(ctx):
        ctx.stats.update(counts, window=[start.isoformat(), end.isoformat()])
        ctx.write_table(labels)

    return run_stage(STAGE, STAGE_VERSION, compute, config={"content": digest}, store=store)
