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
import io
import json
import logging
import re
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from router_tasks.core.prompts import normalize_prompt, prompt_id
from router_tasks.data.quality import enforce, prompts_suite, resolve_thresholds
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "ingest"
STAGE_VERSION = "2"  # 2: prompts suite (quarantine + Data Docs)
MAX_PROMPT_CHARS_DEFAULT = 100_000
FORMATS = ("jsonl", "json", "csv", "parquet")


class InputDataError(ValueError):
    """Bad input data: the message names the file, the row and the field."""


def _read_source_bytes(source: str) -> bytes:
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        store = ArtifactStore(f"s3://{parsed.netloc}")
        try:
            return store.read_bytes(parsed.path.lstrip("/"))
        except FileNotFoundError:
            raise InputDataError(f"{source}: no such object") from None
    path = parsed.path if parsed.scheme == "file" else source
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputDataError(f"{source}: no such file") from None


def _format_of(source: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    name = urlparse(source).path.lower()
    for ext in FORMATS:
        if name.endswith("." + ext):
            return "jsonl" if ext == "json" else ext
    raise InputDataError(f"{source}: cannot tell the format from the name; expected one of {FORMATS}")


def read_prompt_file(source: str, fmt: str | None = None, data: bytes | None = None) -> pd.DataFrame:
    """Parse a dataset file into a DataFrame, with errors that name the line or field."""
    fmt = _format_of(source, fmt)
    if data is None:  # callers that already hold the bytes pass them: one download per source
        data = _read_source_bytes(source)
    if not data.strip():
        raise InputDataError(f"{source}: the file is empty; expected {fmt} rows with a 'prompt' column")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InputDataError(f"{source}: not a readable Parquet file ({err})") from None
        _check_parquet_schema(source, table.schema)
        return table.to_pandas()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputDataError(
            f"{source}: line {line}: invalid UTF-8 byte at offset {err.start}; expected UTF-8 text"
        ) from None
    if fmt == "csv":
        try:
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except pd.errors.ParserError as err:
            raise InputDataError(f"{source}: malformed CSV ({err})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputDataError(f"{source}: line {lineno}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InputDataError(f"{source}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        for name, value in row.items():  # a "\udce9" escape decodes to text UTF-8 cannot hold
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise InputDataError(
                        f"{source}: line {lineno}: field '{name}' is not valid UTF-8 text "
                        f"(unpaired surrogate escape at character {err.start})"
                    ) from None
        rows.append(row)
    return pd.DataFrame(rows)


def _check_parquet_schema(source: str, schema) -> None:
    """Parquet carries types: name a wrong one for the whole column, not row by row."""
    import pyarrow as pa

    col = next((n for n in ("prompt", "question", "turns") if n in schema.names), None)
    if col is None:
        return  # normalize_prompt_table names the missing column
    typ = schema.field(col).type
    text = pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    listed = (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_string(typ.value_type)
    if not (text or (col == "turns" and listed)) and not pa.types.is_null(typ):
        expected = "string (or list<string> for 'turns')" if col == "turns" else "string"
        raise InputDataError(f"{source}: wrong Parquet schema: column '{col}' has type {typ}; expected {expected}")


_GSM8K_GOLD = re.compile(r"####\s*(-?[\d,\.]+)\s*$")


def _first(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def normalize_prompt_table(raw: pd.DataFrame, source: str, dataset: str, max_chars: int) -> pd.DataFrame:
    """Map a raw dataset to the prompt table schema; raise on a bad row naming it."""
    col = _first(raw, ("prompt", "question", "turns"))
    if col is None:
        raise InputDataError(
            f"{source}: missing 'prompt' column (also accepted: 'question', 'turns'); "
            f"found columns {list(raw.columns)}"
        )
    values = raw[col]
    # Files that mix `prompt` rows and `question` rows (common when datasets are
    # concatenated): a row's prompt is the first of the two it has.
    if col == "prompt" and "question" in raw.columns:
        values = values.where(values.notna(), raw["question"])
    prompts = []
    for i, value in enumerate(values.tolist()):
        if col == "turns" and isinstance(value, (list, tuple, np.ndarray)) and len(value):
            value = value[0]
        if not isinstance(value, str):
            raise InputDataError(
                f"{source}: row {i + 1}: field '{col}' must be text, got {type(value).__name__} {value!r:.60}"
            )
        text = normalize_prompt(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate, e.g. a JSON "\udc80" escape
            raise InputDataError(
                f"{source}: row {i + 1}: field '{col}' is not valid UTF-8 text "
                f"(unpaired surrogate {text[err.start]!r} at character {err.start})"
            ) from None
        if not text:
            raise InputDataError(f"{source}: row {i + 1}: field '{col}' is empty after normalising whitespace")
        if len(text) > max_chars:
            raise InputDataError(
                f"{source}: row {i + 1}: field '{col}' has {len(text):,} characters; "
                f"the limit is {max_chars:,} (set max_prompt_chars to raise it)"
            )
        prompts.append(text)

    gold = [None] * len(raw)
    gold_type = [None] * len(raw)
    if "gold_answer" in raw.columns:
        gold = [None if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else str(v) for v in raw["gold_answer"]]
        if "gold_type" in raw.columns:
            gold_type = [str(t) if g is not None else None for g, t in zip(gold, raw["gold_type"])]
        else:
            gold_type = [
                None if g is None else ("letter" if re.fullmatch(r"[A-Ja-j]", g.strip()) else "number")
                for g in gold
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

    return pd.DataFrame(
        {
            "prompt_id": [prompt_id(p) for p in prompts],
            "prompt": prompts,
            "dataset": dataset,
            "gold_answer": pd.array(gold, dtype="string"),
            "gold_type": pd.array(gold_type, dtype="string"),
            "reference_answer": pd.array(refs, dtype="string"),
            "category": pd.array(cats, dtype="string"),
        }
    )


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
        table = normalize_prompt_table(raw, source, dataset, max_prompt_chars)
        before = len(table)
        table = table.drop_duplicates("prompt_id", keep="first").reset_index(drop=True)
        deduped = len(table)
        # Before sampling, so a sample of n holds n good prompts.
        table = enforce(ctx, table, prompts_suite(th), min_kept_share=float(th["min_kept_share"]))
        if sample is not None and sample < len(table):
            table = table.sample(n=sample, random_state=seed).sort_index().reset_index(drop=True)
        # Shard by id hash, not position: a prompt keeps its shard when the file grows.
        table["shard"] = [int(pid[:8], 16) % shards for pid in table["prompt_id"]]
        ctx.stats.update(rows_read=len(raw), duplicates_dropped=before - deduped, rows_out=len(table),
                         quarantined=ctx.stats["quality"]["prompts"]["rows_quarantined"])
        log.info("ingest %s: %d rows read, %d kept", source, len(raw), len(table))
        ctx.write_table(table)

    return run_stage(STAGE, STAGE_VERSION, compute, config=config, store=store)
