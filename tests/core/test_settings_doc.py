"""docs/settings.md is generated from the code (scripts/settings_doc.py): it must match what
the code says now, and every TELA_* environment variable the code names must be in the
table it is built from (router_tasks/core/settings.py), and every row there still named."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from router_tasks.core.settings import ENV_BY_NAME

REPO = Path(__file__).resolve().parents[2]
READERS = ("router_tasks", "dags", "plugins", "scripts")
# a whole TELA_* name (not a prefix such as TELA_CLUSTER_{PG,...}_PORT, nor AIRFLOW_CONN_TELA_S3)
NAME = re.compile(r"\bTELA_[A-Z0-9_]*[A-Z0-9]\b")


def _script():
    spec = importlib.util.spec_from_file_location("settings_doc", REPO / "scripts" / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_names_in_code() -> dict[str, str]:
    """{TELA_* name: the first file naming it} over the code that can read one."""
    found: dict[str, str] = {}
    for folder in READERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in NAME.findall(path.read_text()):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def test_settings_doc_is_up_to_date():
    doc = REPO / "docs" / "settings.md"
    assert doc.exists() and doc.read_text() == _script().render(), (
        "docs/settings.md is out of date: run `python scripts/settings_doc.py`"
    )


def test_every_tela_variable_in_the_code_is_in_the_table():
    found = env_names_in_code()
    assert {"TELA_ARTIFACT_ROOT", "TELA_S3_ENDPOINT_URL", "TELA_CLUSTER_PG_PORT"} <= set(found)  # the scan works
    missing = {name: where for name, where in found.items() if name not in ENV_BY_NAME}
    assert not missing, f"add these to ENV_VARS in router_tasks/core/settings.py: {missing}"
    stale = sorted(set(ENV_BY_NAME) - set(found))
    assert not stale, f"ENV_VARS rows no code names any more: {stale}"
