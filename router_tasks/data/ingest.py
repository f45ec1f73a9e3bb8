"""Ingest: read a prompt dataset (jsonl / csv / parquet; local path or s3://), normalise it
to the prompt table, dedupe, optionally sample, and assign shards.

Accepted input columns (first match wins):
- the prompt: `prompt`, `question`, or `turns` (MT-Bench style; the first turn is routed);
- a gold answer for exact-match grading: `gold_answer`, or GSM8K-style `answer` ending
  in `#### <number>`; its kind in `gold_type` ("number" / "letter") or inferred;
- a reference answer for the LLM judge: `reference_answer` or `reference`;
- optional `category`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from router_tasks.core.prompts import normalize_prompt, prompt_id
from router_tasks.core.stage import ArtifactRef, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.quality import enforce, resolve_thresholds
from router_tasks.data.quality_suites import prompts_suite
from router_tasks.data.table_files import FORMATS, InputDataError, read_source_bytes, read_table_bytes  # noqa: F401

log = logging.getLogger(__name__)

STAGE = "ingest"
STAGE_VERSION = "3"  # 3: one file per shard, bad rows quarantined. 2: prompts suite (quarantine + Data Docs)
SHARD_FILE = "shards/{:05d}.parquet"  # one per shard, beside data.parquet (the whole table)
INPUT_QUARANTINE = "quarantine_input.parquet"  # rows the reader set aside: row, field, reason, value
MAX_PROMPT_CHARS_DEFAULT = 100_000


# One reader for every command that takes a prompt file (see table_files).
read_prompt_file = read_table_bytes
_read_source_bytes = read_source_bytes


_GSM8K_GOLD = re.compile(r"####\s*(-?[\d,\.]+)\s*$")


def _first(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def normalize_prompt_table(
    raw: pd.DataFrame, source: str, dataset: str, max_chars: int, rejected: list[dict] | None = None
) -> pd.DataFrame:
    """Map a raw dataset to the prompt table schema.

    A bad row (null, non-text, blank or oversized prompt; text UTF-8 cannot hold; a gold
    answer that does not fit its type) is left out; with `rejected` given it is appended
    there as {row, field, reason, value}, else the first one raises InputDataError."""
    col = _first(raw, ("prompt", "question", "turns"))
    if col is None:
        raise InputDataError(
            f"{source}: missing 'prompt' column (also accepted: 'question', 'turns'); found columns {list(raw.columns)}"
        )
    values = raw[col]
    # Files that mix `prompt` rows and `question` rows (common when datasets are
    # concatenated): a row's prompt is the first of the two it has.
    if col == "prompt" and "question" in raw.columns:
        values = values.where(values.notna(), raw["question"])

    def reject(i: int, field: str, reason: str, value) -> None:
        item = {"row": i + 1, "field": field, "reason": reason, "value": f"{value!r:.80}"}
        if rejected is None:
            raise InputDataError(f"{source}: row {i + 1}: {reason}")
        rejected.append(item)

    prompts: list[str | None] = []
    for i, value in enumerate(values.tolist()):
        prompts.append(None)
        if col == "turns" and isinstance(value, (list, tuple, np.ndarray)) and len(value):
            value = value[0]
        if not isinstance(value, str):
            reject(i, col, f"field '{col}' must be text, got {type(value).__name__} {value!r:.60}", value)
            continue
        text = normalize_prompt(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate, e.g. a JSON "\udc80" escape
            reject(
                i,
                col,
                f"field '{col}' is not valid UTF-8 text (unpaired surrogate {text[err.start]!r} "
                f"at character {err.start})",
                value,
            )
            continue
        if not text:
            reject(i, col, f"field '{col}' is empty after normalising whitespace", value)
            continue
        if len(text) > max_chars:
            reject(
                i,
                col,
                f"field '{col}' has {len(text):,} characters; the limit is {max_chars:,} "
                f"(set max_prompt_chars to raise it)",
                value[:80],
            )
            continue
        prompts[i] = text

    gold = [None] * len(raw)
    gold_type = [None] * len(raw)
    if "gold_answer" in raw.columns:
        gold = [
            None if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in raw["gold_answer"]
        ]
        if "gold_type" in raw.columns:
            gold_type = [str(t) if g is not None else None for g, t in zip(gold, raw["gold_type"], strict=False)]
        else:
            gold_type = [
                None if g is None else ("letter" if re.fullmatch(r"[A-Ja-j]", g.strip()) else "number") for g in gold
            ]
    elif "answer" in raw.columns:  # GSM8K: worked solution ending in '#### n'
        for i, ans in enumerate(raw["answer"].tolist()):
            m = _GSM8K_GOLD.search(str(ans or ""))
            if m:
                gold[i], gold_type[i] = m.group(1).replace(",", ""), "number"

    ref_col = _first(raw, ("reference_answer", "reference"))
    refs = [None] * len(raw)
    if ref_col:
        for i, v in enumerate(raw[ref_col].tolist()):
            if isinstance(v, (list, tuple, np.ndarray)):
                v = v[0] if len(v) else None
            refs[i] = v if isinstance(v, str) and v.strip() else None
    cats = raw["category"].astype("string").tolist() if "category" in raw.columns else [None] * len(raw)
    for i, (g, t) in enumerate(zip(gold, gold_type, strict=False)):
        if prompts[i] is None or g is None:
            continue
        why = _bad_gold(g, t)
        if why:
            reject(i, "gold_answer", why, g)
            prompts[i] = None

    keep = [i for i, p in enumerate(prompts) if p is not None]
    pick = lambda seq: [seq[i] for i in keep]  # noqa: E731
    return pd.DataFrame(
        {
            "prompt_id": [prompt_id(prompts[i]) for i in keep],
            "prompt": pick(prompts),
            "dataset": dataset,
            "gold_answer": pd.array(pick(gold), dtype="string"),
            "gold_type": pd.array(pick(gold_type), dtype="string"),
            "reference_answer": pd.array(pick(refs), dtype="string"),
            "category": pd.array(pick(cats), dtype="string"),
        }
    )


_NUMBER = re.compile(r"^\s*-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*%?\s*$")


def _bad_gold(gold: str, gold_type: str | None) -> str | None:
    """Why a gold answer cannot be graded against, or None if it can."""
    if gold_type not in ("number", "letter"):
        return f"gold_type {gold_type!r} is not 'number' or 'letter'"
    if gold_type == "number" and not _NUMBER.match(gold):
        return f"gold answer {gold!r:.40} is not a number (gold_type 'number')"
    if gold_type == "letter" and not re.fullmatch(r"\s*\(?[A-Ja-j]\)?\.?\s*", gold):
        return f"gold answer {gold!r:.40} is not a single letter A-J (gold_type 'letter')"
    return None


def shard_of(pid: str, shards: int) -> int:
    """A prompt's shard: by id hash, not position, so it keeps its shard when the file grows
    (the request cache's partitions rely on the same rule, see labeling.request_cache)."""
    return int(pid[:8], 16) % shards


def prompt_shards(prompts, store: ArtifactStore) -> tuple[int, list[int]]:
    """(shard count, shards present) of a prompts artifact, from its manifest alone."""

    manifest = read_manifest(store, prompts)
    files = manifest.get("files", {})
    present = sorted(int(f.split("/")[-1].split(".")[0]) for f in files if f.startswith("shards/"))
    count = manifest.get("stats", {}).get("shards")
    if count is None or not present:  # an artifact made before per-shard files, or not by ingest
        df = store.read_parquet(f"{ArtifactRef.of(prompts).key}/data.parquet")
        present = sorted(int(s) for s in df["shard"].dropna().unique()) if "shard" in df.columns else [0]
        return (max(present) + 1 if present else 1), present or [0]
    return int(count), present


def read_prompt_shard(prompts, shard: int | None, store: ArtifactStore) -> pd.DataFrame:
    """One shard of a prompts artifact (the whole table for None): reads that shard's file only."""

    key = ArtifactRef.of(prompts).key
    if shard is not None:
        name = SHARD_FILE.format(int(shard))
        if name in read_manifest(store, prompts).get("files", {}):
            return store.read_parquet(f"{key}/{name}")
    df = store.read_parquet(f"{key}/data.parquet")
    if shard is not None and "shard" in df.columns:
        df = df[df["shard"] == int(shard)].reset_index(drop=True)
    return df


def ingest_prompts(
    source: str,
    *,
    dataset: str | None = None,
    fmt: str | None = None,
    sample: int | None = None,
    shards: int = 1,
    seed: int = 0,
    max_prompt_chars: int = MAX_PROMPT_CHARS_DEFAULT,
    thresholds: dict | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Read `source`, normalise, dedupe by prompt id, sample, shard; return the artifact ref.

    The source's content hash is part of the artifact key, so an edited file is ingested
    again while an unchanged one is reused. `max_prompt_chars` is the hard limit (a file
    with a longer prompt is refused); the prompts suite then sets aside rows outside
    `thresholds` `min_prompt_chars` / `max_prompt_chars` (see `router_tasks.data.quality`).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    store = ArtifactStore(artifact_root)
    th = resolve_thresholds(thresholds)
    raw_bytes = _read_source_bytes(source)
    dataset = dataset or re.sub(r"\.[a-z]+$", "", urlparse(source).path.rsplit("/", 1)[-1])
    config = {
        "source": source,
        "source_sha256": hashlib.sha256(raw_bytes).hexdigest(),
        "dataset": dataset,
        "fmt": fmt,
        "sample": sample,
        "shards": shards,
        "seed": seed,
        "max_prompt_chars": max_prompt_chars,
        "thresholds": {k: v for k, v in th.items() if k in ("min_kept_share", "min_prompt_chars", "max_prompt_chars")},
    }

    def compute(ctx):
        raw = read_prompt_file(source, fmt, raw_bytes)
        rejected: list[dict] = []
        table = normalize_prompt_table(raw, source, dataset, max_prompt_chars, rejected)
        min_kept = float(th["min_kept_share"])
        if len(raw) and len(table) / len(raw) < min_kept:
            shown = "; ".join(f"row {r['row']}: {r['reason']}" for r in rejected[:5])
            more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
            raise InputDataError(
                f"{source}: {len(rejected)} of {len(raw)} rows set aside, kept share "
                f"{len(table) / len(raw):.2f} is under min_kept_share {min_kept}: {shown}{more}"
            )
        if rejected:
            log.warning(
                "ingest %s: %d bad rows quarantined, e.g. row %d: %s",
                source,
                len(rejected),
                rejected[0]["row"],
                rejected[0]["reason"],
            )
            ctx.write_table(
                pd.DataFrame(rejected, columns=["row", "field", "reason", "value"]).astype(
                    {"field": "string", "reason": "string", "value": "string"}
                ),
                INPUT_QUARANTINE,
            )
        before = len(table)
        table = table.drop_duplicates("prompt_id", keep="first").reset_index(drop=True)
        deduped = len(table)
        # Before sampling, so a sample of n holds n good prompts.
        table = enforce(ctx, table, prompts_suite(th), min_kept_share=float(th["min_kept_share"]))
        if sample is not None and sample < len(table):
            table = table.sample(n=sample, random_state=seed).sort_index().reset_index(drop=True)
        # Shard by id hash, not position: a prompt keeps its shard when the file grows.
        table["shard"] = [shard_of(pid, shards) for pid in table["prompt_id"]]
        ctx.stats.update(
            rows_read=len(raw),
            duplicates_dropped=before - deduped,
            rows_out=len(table),
            quarantined=ctx.stats["quality"]["prompts"]["rows_quarantined"],
            input_rows_rejected=len(rejected),
            input_rejections=rejected[:20],
            shards=shards,
        )
        log.info("ingest %s: %d rows read, %d kept", source, len(raw), len(table))
        ctx.write_table(table)
        # One file per shard, so a labeling part reads its shard and nothing else.
        for shard, part in table.groupby("shard", sort=True):
            ctx.write_table(part.reset_index(drop=True), SHARD_FILE.format(int(shard)))

    return run_stage(STAGE, STAGE_VERSION, compute, config=config, store=store)
