"""The team's settings, carried around the loop.

An Asset-scheduled or cron Airflow run gets its DAG's default params, never a trigger
conf, so a team's endpoints, judge and model pair must travel with the data they made:

- a `router_pipeline` run's settings (its params except `source` and `sample`) are
  recorded with the labels it produces (`labels/LATEST.json` and the labels Asset event:
  `retraining.record_labels`) and with the champion it publishes (CHAMPION.json
  `settings` and `settings_from`);
- `router_retraining` trains for the model pair its labels' settings name (else the
  champion's), evaluates as they say, and records them with the champion it publishes,
  with the winning router's type and params;
- `router_drift_relabel` starts `router_pipeline` on a traffic sample with the champion's
  settings: the same endpoints, judge, reference model and model pair.

A run resolves its settings in layers, a later layer winning key by key (`resolve`): the
library defaults, the champion's recorded settings, the labels' recorded settings
(retraining), the Airflow Variable `tela_loop_settings` (a JSON object of pipeline params:
the team's standing override) and the run's own params (a manual run). The answer says
where each value came from; the runs log it (`describe`) and the champion keeps it.

No secrets: an endpoint names the environment variable and Airflow connection that hold
its key (`api_key_env`, `conn_id`), never a key (an `api_key` field is refused), and its
URL is stored without credentials or query string.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from router_tasks.core.endpoints import Endpoint
from router_tasks.core.params import PIPELINE_PARAMS
from router_tasks.core.schemas import CHAMPION_KEY
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

#: a run's data, not its settings
RUN_ONLY = ("source", "sample")
#: what a run's settings are: every pipeline parameter but the data it runs on
SETTINGS_KEYS = tuple(k for k in PIPELINE_PARAMS if k not in RUN_ONLY)
#: the Airflow Variable holding the team's override (a JSON object of pipeline params)
VARIABLE = "tela_loop_settings"
ENDPOINT_KEYS = ("models", "judge", "reference_model")
DEFAULTS_LAYER = "library defaults"


def _endpoint(value, where: str):
    if isinstance(value, list):  # a list of endpoints (models; several judges)
        return [_endpoint(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    ep = Endpoint.from_dict(value, where=where)  # refuses an `api_key` field and unknown fields
    out = dict(value)
    if out.get("base_url"):
        out["base_url"] = ep.output_config()["base_url"]  # no user:password@, no query string
    return out


def recordable(settings: Mapping, where: str = "settings") -> dict:
    """`settings` checked (only pipeline params, endpoints that parse and hold no key) and
    made safe to store: plain JSON, endpoint URLs without credentials."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where}: expected a JSON object of pipeline params, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown setting(s) {unknown}; the loop's settings are router_pipeline params: "
            f"{list(SETTINGS_KEYS)}"
        )
    out = json.loads(json.dumps(dict(settings), default=str))
    for key in ENDPOINT_KEYS:
        if out.get(key) is not None:
            out[key] = _endpoint(out[key], f"{where}.{key}")
    return out


def run_settings(params: Mapping) -> dict:
    """A pipeline run's settings to record: its params but `source` and `sample`."""
    return recordable({k: params[k] for k in SETTINGS_KEYS if k in params}, where="run params")


def resolve(layers: Sequence[tuple[str, Mapping | None]]) -> dict:
    """{"settings": every key of SETTINGS_KEYS, "from": {key: layer name}}: the library
    defaults, then each (name, settings) layer in order, later ones winning key by key.
    A layer that is None (absent) is skipped."""
    settings = {k: PIPELINE_PARAMS[k] for k in SETTINGS_KEYS}
    source = {k: DEFAULTS_LAYER for k in SETTINGS_KEYS}
    for name, layer in layers:
        if layer is None:
            continue
        for key, value in recordable(layer, where=name).items():
            settings[key], source[key] = value, name
    return {"settings": settings, "from": source}


def champion_settings(store: ArtifactStore) -> tuple[str, dict | None]:
    """(layer name, recorded settings or None) of the current champion."""
    if not store.exists(CHAMPION_KEY):
        return "champion (none yet)", None
    champion = store.read_json(CHAMPION_KEY)
    name = f"champion {champion['router']['key']}"
    if champion.get("settings") is None:
        log.warning(
            "the champion (%s) records no settings (published before they were recorded): "
            "the loop falls back to the library defaults and the Variable %s",
            name,
            VARIABLE,
        )
        return f"{name} (records none)", None
    return name, champion["settings"]


def relabel_conf(
    source: str, *, variable: Mapping | None = None, conf: Mapping | None = None, artifact_root: str | None = None
) -> dict:
    """router_pipeline's conf to label the traffic sample `source`: the champion's settings,
    under the Variable's and then `conf`'s (the relabel run's own param). Returns
    {"conf": ..., "from": {key: where its value came from}}."""
    conf = dict(conf or {})
    conf.pop("source", None)  # the traffic sample is the point of the run
    own = "the relabel run's pipeline_conf param"
    run_only = {k: conf.pop(k) for k in RUN_ONLY if k in conf}  # e.g. a `sample` cap: this run's, not a setting
    store = ArtifactStore(artifact_root)
    resolved = resolve([champion_settings(store), (f"Variable {VARIABLE}", variable), (own, conf or None)])
    return {
        "conf": {**resolved["settings"], **run_only, "source": source},
        "from": {**resolved["from"], **{k: own for k in run_only}, "source": "the drift event's traffic sample"},
    }


def describe(resolved: Mapping) -> str:
    """One line per setting not left at the library default, with where it came from (for logs)."""
    rows = [
        f"  {k} = {json.dumps(v, default=str)[:300]}  <- {resolved['from'][k]}"
        for k, v in resolved.get("settings", resolved.get("conf", {})).items()
        if resolved["from"].get(k) != DEFAULTS_LAYER
    ]
    return "\n".join(rows) or "  (every setting at its library default)"
