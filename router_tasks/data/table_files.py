"""Table files a user hands us or asks for: JSON Lines, JSON arrays, CSV and Parquet, local or
s3://. One reader for every command that takes a file of prompts or labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _read_json(path: str) -> pd.DataFrame:
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError:  # a JSON array of records rather than JSON Lines
        return pd.read_json(path, dtype=False)


_READERS = {
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: _read_json(p),
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    ".parquet": pd.read_parquet,
}


def _suffix(path: str) -> str:
    return Path(str(path).split("?")[0]).suffix.lower()


def read_table_file(path: str, what: str = "prompts") -> pd.DataFrame:
    """A jsonl/csv/parquet file as a table; errors name the file."""
    suffix = _suffix(path)
    if suffix not in _READERS:
        raise ValueError(f"{path}: unsupported {what} file type {suffix!r}; use one of {sorted(_READERS)}")
    if "://" not in str(path) and not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return _READERS[suffix](path)
    except ValueError as err:
        raise ValueError(f"{path}: cannot read as {suffix[1:]}: {err}") from err


def read_prompts(path: str) -> list[str]:
    """The `prompt` column of a jsonl/csv/parquet file; errors name the file and row."""
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
