"""docker-compose.yaml and `make cluster` (scripts/cluster.py) deploy the same shape:
the same components, queues and configuration names. (No Docker engine here: compose is
checked statically; the script's deployment runs for real in test_cluster_live.py.)"""

from __future__ import annotations

import importlib.util
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
        assert cmd[:1] == ["airflow"] and cmd[1:1 + len(args)] == list(args), (component, cmd)
    airflow_services = {name for name in compose if name.startswith("airflow-") and name != "airflow-init"}
    assert airflow_services == {_service_for(c) for c in cluster_script.AIRFLOW_COMPONENTS}
    # the backing services: postgres, redis, and an S3 API (MinIO in compose, moto in the script)
    assert {"postgres", "redis", "minio"} <= set(compose)
    assert set(cluster_script.SERVICES) == {"postgres", "redis", "s3"}


def test_one_worker_per_queue_and_the_gpu_worker_reserves_a_gpu(cluster_script, compose):
    queues = {}
    for name, svc in compose.items():
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
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__API_AUTH__JWT_SECRET",
                    "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_CONN_TELA_S3"):
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
