"""Client keys: the KEYS file `tela keys` writes and `tela serve --keys` reads.

    {"version": 1, "keys": [{"name": "web-app", "sha256": "<hex>", "rpm": 600,
                             "usd_per_day": 25.0, "created_at": "...", "revoked_at": null}]}

A key is `tela-` and 43 random URL-safe characters (256 bits), printed once by `create`;
the file keeps only its SHA-256 (a key that random needs no salt or slow hash: nothing
short of the key itself finds it), so a leaked KEYS file spends nothing. A name is what
every log, metric and counter shows instead of the key. Revoking keeps the entry (with
`revoked_at`) as a record; a name has at most one active key, so a team rotates a key by
revoking it and creating a new one under the same name (its limits' counters continue).

Writes are atomic (a temporary file renamed over the old one) and owner-only (0600); a
running gateway sees a change within `keys_reload_s`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime

KEY_PREFIX = "tela-"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClientKey:
    """A key's name and limits (None: no limit)."""

    name: str
    rpm: int | None = None
    usd_per_day: float | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.usd_per_day is not None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_keys_file(path: str) -> list[dict]:
    """The entries of a KEYS file; a missing file is an empty one. ValueError names what is wrong."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise ValueError(f"keys file {path}: cannot read it as JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f'keys file {path}: expected {{"version": 1, "keys": [...]}}')
    for i, entry in enumerate(data["keys"]):
        where = f"keys file {path}: keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        if not isinstance(entry.get("name"), str) or not NAME_RE.fullmatch(entry["name"]):
            raise ValueError(f"{where}: 'name' must match {NAME_RE.pattern}")
        if not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise ValueError(f"{where} ({entry['name']}): 'sha256' must be 64 hex digits")
        _check_limits(entry.get("rpm"), entry.get("usd_per_day"), where)
    return data["keys"]


def _check_limits(rpm, usd_per_day, where: str) -> None:
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
        raise ValueError(f"{where}: rpm must be a positive integer (requests per minute), got {rpm!r}")
    if usd_per_day is not None and (
        isinstance(usd_per_day, bool) or not isinstance(usd_per_day, (int, float)) or not usd_per_day > 0
    ):
        raise ValueError(f"{where}: usd_per_day must be a number > 0 (dollars per UTC day), got {usd_per_day!r}")


def _write_keys_file(path: str, entries: list[dict]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": FORMAT_VERSION, "keys": entries}, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_key(path: str, name: str, rpm: int | None = None, usd_per_day: float | None = None) -> str:
    """Add a key named `name` to the KEYS file; returns the key (the only time it exists in clear)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it appears in logs and metrics)"
        )
    _check_limits(rpm, usd_per_day, "tela keys create")
    entries = read_keys_file(path)
    if any(e["name"] == name and not e.get("revoked_at") for e in entries):
        raise ValueError(
            f"a key named {name!r} is active in {path}: revoke it first (tela keys revoke) or pick another name"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entries.append(
        {
            "name": name,
            "sha256": key_hash(key),
            "rpm": rpm,
            "usd_per_day": None if usd_per_day is None else float(usd_per_day),
            "created_at": _now(),
            "revoked_at": None,
        }
    )
    _write_keys_file(path, entries)
    return key


def revoke_key(path: str, name: str) -> dict:
    """Mark the active key named `name` revoked; returns its entry."""
    entries = read_keys_file(path)
    for entry in entries:
        if entry["name"] == name and not entry.get("revoked_at"):
            entry["revoked_at"] = _now()
            _write_keys_file(path, entries)
            return entry
    names = sorted({e["name"] for e in entries if not e.get("revoked_at")})
    raise ValueError(f"no active key named {name!r} in {path}; active: {names or 'none'}")


def list_keys(path: str) -> list[dict]:
    """Every entry without its hash: name, limits, created_at, revoked_at."""
    return [{k: v for k, v in e.items() if k != "sha256"} for e in read_keys_file(path)]


def active_keys(path: str) -> dict[str, ClientKey]:
    """hash -> ClientKey of the keys not revoked (what the gateway checks a request against)."""
    return {
        e["sha256"]: ClientKey(e["name"], e.get("rpm"), e.get("usd_per_day"))
        for e in read_keys_file(path)
        if not e.get("revoked_at")
    }
