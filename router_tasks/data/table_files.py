"""Table files a user hands us or asks for: JSON Lines, JSON arrays, CSV and Parquet, local or
s3://. One reader for every command that takes a file of prompts or labels: `tela ingest`
(through `router_tasks.data.ingest`), `tela score`, file mode and calibration all parse a
file with `read_table_bytes`, so a format one accepts the others accept too.

Errors name the file and the line (or the item of a JSON array) and say what was expected.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from router_tasks.core.store import ArtifactStore

FORMATS = ("jsonl", "json", "csv", "parquet")


class InputDataError(ValueError):
    """Bad input data: the message names the file, the row and the field."""


def read_source_bytes(source: str) -> bytes:
    """The bytes of a local path, file:// or s3:// URI (S3 settings from the environment)."""
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
            return ext
    raise InputDataError(f"{source}: cannot tell the format from the name; expected one of {FORMATS}")


def read_table_bytes(source: str, fmt: str | None = None, data: bytes | None = None) -> pd.DataFrame:
    """Parse a table file into a DataFrame, with errors that name the line or field.

    `.json` holds either a JSON array of objects or JSON Lines."""
    fmt = _format_of(source, fmt)
    if data is None:  # callers that already hold the bytes pass them: one download per source
        data = read_source_bytes(source)
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
    if fmt == "json" and text.lstrip().startswith("["):  # a JSON array of records
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputDataError(f"{source}: line {err.lineno}: malformed JSON array ({err.msg})") from None
        numbered = [(f"item {i}", item) for i, item in enumerate(items, 1)]
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InputDataError(f"{source}: line {lineno}: malformed JSON ({err.msg})") from None
    for lineno, row in numbered:
        if not isinstance(row, dict):
            raise InputDataError(f"{source}: {lineno}: expected a JSON object, got {type(row).__name__}")
        for name, value in row.items():  # a "\udce9" escape decodes to text UTF-8 cannot hold
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise InputDataError(
                        f"{source}: {lineno}: field '{name}' is not valid UTF-8 text "
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


def read_table_file(path: str, what: str = "prompts") -> pd.DataFrame:
    """A jsonl/json/csv/parquet file (local or s3://) as a table; errors name the file."""
    suffix = _suffix(path)
    if suffix.lstrip(".") not in FORMATS:
        raise ValueError(
            f"{path}: unsupported {what} file type {suffix!r}; use one of {sorted('.' + f for f in FORMATS)}"
        )
    if "://" not in str(path) and not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return read_table_bytes(str(path))


def _suffix(path: str) -> str:
    return Path(urlparse(str(path)).path).suffix.lower()


def read_prompts(path: str) -> list[str]:
    """The `prompt` column of a jsonl/json/csv/parquet file; errors name the file and row."""
    df = read_table_file(path)
    if "prompt" not in df.columns:
        raise ValueError(f"{path}: no 'prompt' column (columns: {list(df.columns)})")
    prompts = df["prompt"].tolist()
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{path}: row {i} has an empty or non-text prompt: {p!r:.80}")
    return prompts


WRITABLE = (".parquet", ".csv", ".jsonl", ".json")


def check_output_path(path: str) -> None:
    """Refuse an output file type we cannot write, before any work is done."""
    if _suffix(path) not in WRITABLE:
        raise ValueError(f"{path}: unsupported output type {_suffix(path)!r}; use .parquet, .csv or .jsonl")


def write_table_file(df: pd.DataFrame, path: str) -> None:
    check_output_path(path)
    suffix = _suffix(path)
    if "://" not in str(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:  # .jsonl, .json
        df.to_json(path, orient="records", lines=True, force_ascii=False)
