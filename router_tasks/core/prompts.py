"""Prompt identity: one normalisation and one id function shared by every stage."""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_prompt(text: str) -> str:
    """NFC-normalise and collapse runs of whitespace, so trivial variants dedupe."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the same text gets the same id in every run and dataset."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]
