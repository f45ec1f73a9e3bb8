"""docker-compose.yaml and `make cluster` (scripts/cluster.py) deploy the same shape:
the same components, queues and configuration names. (No Docker engine here: compose is
checked statically; the script's deployment runs for real in test_cluster_live.py.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster_script():
    spec = importlib.util.spec_from_file_location("tela_cluster_script", REPO / "scripts" / "cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]


def _service_for(component: str) -> str:
    return "airflow-" + component.replace("api-server", "apiserver")


def _command(svc) -> list[str]:
    cmd = svc.get("command") or []
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def test_every_script_component_is_a_compose_service_running_the_same_command(cluster_script, compose):
    for component, args in cluster_script.AIRFLOW_COMPONENTS.items():
        svc = compose[_service_for(component)]
        cmd = _command(svc)
        assert cmd[:1] == ["airflow"] and cmd[1 : 1 + len(args)] == list(args), (component, cmd)
    airflow_services = {name for name in compose if name.startswith("airflow-") and name != "airflow-init"}
    assert airflow_services == {_service_for(c) for c in cluster_script.AIRFLOW_COMPONENTS}
    # the backing services: postgres, redis, and an S3 API (MinIO in compose, moto in the script)
    assert {"postgres", "redis", "minio"} <= set(compose)
    assert set(cluster_script.SERVICES) == {"postgres", "redis", "s3"}


def test_one_worker_per_queue_and_the_gpu_worker_reserves_a_gpu(cluster_script, compose):
    queues = {}
    for svc in compose.values():
        cmd = _command(svc)
        if cmd[1:3] == ["celery", "worker"]:
            queues[cmd[cmd.index("--queues") + 1]] = svc
    assert set(queues) == set(cluster_script.QUEUES.values()) == {"default", "gpu"}
    from router_tasks.core import defaults

    assert defaults.GPU_QUEUE in queues  # the queue the DAGs send GPU training to
    devices = queues["gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in queues["default"]
    assert queues["gpu"]["environment"]["TELA_WORKER_NAME"] == "tela-gpu-worker"


def test_same_configuration_names_with_secrets_from_the_environment(cluster_script, compose):
    for component in cluster_script.AIRFLOW_COMPONENTS:
        env = compose[_service_for(component)]["environment"]
        missing = set(cluster_script.AIRFLOW_ENV_NAMES) - set(env)
        assert not missing, (component, missing)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        for key in (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CELERY__BROKER_URL",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW_CONN_TELA_S3",
        ):
            assert "${" in env[key] and ":?" in env[key], f"{component}.{key} must come from the environment"


def test_script_sets_every_name_it_declares(cluster_script, tmp_path):
    cfg = cluster_script.Config(state=tmp_path / "state")
    env = cfg.airflow_env("gpu")
    assert set(cluster_script.AIRFLOW_ENV_NAMES) <= set(env)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and env["TELA_WORKER_NAME"] == "tela-gpu-worker"
    assert (tmp_path / "state" / "secrets.json").stat().st_mode & 0o077 == 0  # secrets file is private


def test_app_credentials_are_not_minio_root_and_images_are_pinned(compose):
    conn = compose["airflow-scheduler"]["environment"]["AIRFLOW_CONN_TELA_S3"]
    assert "MINIO_APP_USER" in conn and "MINIO_APP_PASSWORD" in conn and "MINIO_ROOT" not in conn
    assert "MINIO_APP_USER" in compose["minio-init"]["entrypoint"]
    for name, svc in compose.items():
        image = svc.get("image")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"


def test_the_shared_local_model_server_reaches_every_component(cluster_script, tmp_path):
    """`up` starts one SmolLM2 server; every Airflow process (so every labeling task) gets
    its URL, and `local_llm_server()` then reuses it instead of starting its own."""
    from router_tasks.labeling.llm_server import REUSE_ENV

    cfg = cluster_script.Config(state=tmp_path / "state")
    assert REUSE_ENV not in cfg.airflow_env("default")
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "local_llm_url").write_text("http://127.0.0.1:1234/v1\n")
    for worker in (None, "default", "gpu"):
        assert cfg.airflow_env(worker)[REUSE_ENV] == "http://127.0.0.1:1234/v1"


def test_the_gateway_is_one_launch_command_in_both(cluster_script, compose, tmp_path):
    """compose's tela-gateway runs exactly scripts/cluster.py's gateway_args (the place the
    gateway's flags are added), two replicas, on the artifact store Airflow writes."""
    svc = compose["tela-gateway"]
    cmd = _command(svc)
    assert cmd[0] == "tela"
    args = cmd[1:]
    models, keys, host, port = (args[args.index(flag) + 1] for flag in ("--models", "--keys", "--host", "--port"))
    assert args == cluster_script.gateway_args(models, keys, host, int(port))
    assert keys == "/run/secrets/tela_gateway_keys"  # callers need a key; the file is a mounted secret
    assert args[args.index("--router") + 1] == "champion"  # follows (hot-reloads) what the DAGs publish
    assert svc["deploy"]["replicas"] == 2
    assert svc["image"] == compose["airflow-scheduler"]["image"]
    # the same store as Airflow, reached with the app user; secrets from the environment only
    env = svc["environment"]
    assert set(cluster_script.GATEWAY_ENV_NAMES) <= set(env)
    assert env["TELA_ARTIFACT_ROOT"] == compose["airflow-scheduler"]["environment"]["TELA_ARTIFACT_ROOT"]
    conn = compose["airflow-scheduler"]["environment"]["AIRFLOW_CONN_TELA_S3"]
    assert "http://minio:9000" in conn and env["TELA_S3_ENDPOINT_URL"] == "http://minio:9000"
    for key, var in (("AWS_ACCESS_KEY_ID", "MINIO_APP_USER"), ("AWS_SECRET_ACCESS_KEY", "MINIO_APP_PASSWORD")):
        assert var in env[key] and ":?" in env[key] and var in conn
    # models and the callers' keys are mounted secrets; the models secret is what --models reads
    assert set(svc["secrets"]) == {"tela_gateway_models", "tela_gateway_keys"}
    assert models == "/run/secrets/tela_gateway_models"
    assert {"redis", "minio-init"} <= set(svc["depends_on"])
    # the script's gateway gets the same names, for its own store
    cfg = cluster_script.Config(state=tmp_path / "state")
    genv = cluster_script.gateway_env(cfg)
    assert set(cluster_script.GATEWAY_ENV_NAMES) <= set(genv)
    assert genv["TELA_ARTIFACT_ROOT"] == cfg.airflow_env()["TELA_ARTIFACT_ROOT"]
    assert (
        genv["TELA_S3_ENDPOINT_URL"] == json.loads(cfg.airflow_env()["AIRFLOW_CONN_TELA_S3"])["extra"]["endpoint_url"]
    )
    # limits counted in the cluster's Redis, not the broker's db; compose's replicas share theirs
    assert genv["TELA_GATEWAY_REDIS_URL"].endswith(f":{cfg.redis_port}/1")
    assert env["TELA_GATEWAY_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD") and env[
        "TELA_GATEWAY_REDIS_URL"
    ].endswith("@redis:6379/1")


def test_the_example_gateway_models_file_is_what_tela_serve_reads():
    from router_tasks.serving.config import parse_models_arg

    compose_file = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    assert compose_file["secrets"]["tela_gateway_models"]["file"] == "deploy/gateway-models.json"
    assert len(parse_models_arg(str(REPO / "deploy" / "gateway-models.example.json"))) == 2


def test_every_port_the_script_opens_is_configurable(cluster_script, tmp_path, monkeypatch):
    """Two clusters on one machine (developers, CI) must not collide: every port from the env."""
    ports = {"PG": 41001, "REDIS": 41002, "API": 41003, "S3": 41004, "GATEWAY": 41005}
    for name, port in ports.items():
        monkeypatch.setenv(f"TELA_CLUSTER_{name}_PORT", str(port))
    cfg = cluster_script.Config(state=tmp_path / "state")
    assert (cfg.pg_port, cfg.redis_port, cfg.api_port, cfg.s3_port, cfg.gateway_port) == tuple(ports.values())
    assert cfg.gateway_url == "http://127.0.0.1:41005/v1"
    assert "--port" in cluster_script.gateway_args("m.json", "k.json", "127.0.0.1", cfg.gateway_port)
