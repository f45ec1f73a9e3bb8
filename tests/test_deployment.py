"""Static checks of what ships for deployment (no Docker engine here to run it)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_are_wired():
    spec = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = spec["services"]
    assert {
        "postgres",
        "minio",
        "minio-init",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    } <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
    env = services["airflow-scheduler"]["environment"]
    assert env["TELA_ARTIFACT_ROOT"].startswith("s3://")
    assert "minio:9000" in env["AIRFLOW_CONN_TELA_S3"]
    # secrets are required from the environment, never written in the file
    assert "${POSTGRES_PASSWORD:?" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert services["airflow-apiserver"]["build"] == "."
    # the pools the DAGs use are created with the DB (a task in a missing pool never runs)
    assert "plugins/tela_pools.py" in " ".join(services["airflow-init"]["command"])
    assert (REPO / "Dockerfile").exists()


def test_dockerfile_installs_the_lock():
    text = (REPO / "Dockerfile").read_text()
    assert "-r requirements.txt" in text and "constraints" in text
    for folder in ("router_tasks", "dags", "plugins"):
        assert f"COPY {folder}" in text
