"""A production-shaped Airflow 3 deployment on this machine, without Docker.

    python scripts/cluster.py up      # `make cluster`: start everything, return when healthy
    python scripts/cluster.py down    # `make cluster-down`: stop exactly what `up` started
    python scripts/cluster.py status  # each component: pid, alive, memory (RSS of its process tree)

Components (the same set as docker-compose.yaml; tests/deployment/test_compose_matches_cluster.py
keeps them in step): Postgres (Airflow's metadata DB and Celery's result backend) and Redis
(the Celery broker) from Debian packages, installed with apt-get when missing; moto's S3
server as the artifact store (MinIO in compose); Airflow's api-server, scheduler,
dag-processor, triggerer and two Celery workers, one per queue (`default`, `gpu`); one
shared local model server for endpoints whose base_url is "local" (`TELA_LOCAL_LLM_URL`: the
labeling tasks use it instead of each starting its own; `--no-local-llm` leaves it out); and,
with `--gateway-models FILE`, the routing gateway (`tela serve` on those upstream endpoints,
the `tela-gateway` service in compose): it reads the champion from the same S3 store as
Airflow, hot-reloads it when the DAGs publish a new one, and writes its traffic log there for
`router_drift`. Its URL goes to cluster.env (`TELA_GATEWAY_URL`); the upstreams' API keys
come from the environment `make cluster` runs in (the variables the endpoints' `api_key_env`
name).

Every secret (DB and Redis passwords, the UI password, JWT secret, Fernet key, the S3 app
keys) is generated at the first `up`, kept in STATE/secrets.json (mode 600) and reaches the
components as environment variables or Airflow connections (`AIRFLOW_CONN_TELA_S3`), never
through a file in the repo. `up` writes cluster.env (git-ignored) for scripts and tests.

Everything lives in one state folder (default .cluster/ in the repo, env TELA_CLUSTER_DIR),
ports are fixed but configurable (env TELA_CLUSTER_{PG,REDIS,API,S3,GATEWAY}_PORT), and every process
`up` starts is recorded as a pid file there, so `down` stops those and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = Path(sys.executable)
BIN = PY.parent
PG_BIN = Path("/usr/lib/postgresql")
APT_PACKAGES = {"postgres": "postgresql", "redis-server": "redis-server"}

BUCKET = "tela-artifacts"
USER = "admin"
S3_CONN_ID = "tela_s3"
QUEUES = {"default": "default", "gpu": "gpu"}  # worker name -> Celery queue it consumes
# The DAGs the deployment relies on being unpaused: router_pipeline is triggered by users,
# router_retraining consumes the labels Asset and router_drift_relabel the drift Asset (an
# Asset's events are dropped while its consumer is paused), router_drift checks the traffic
# hourly. Together they close the loop: traffic -> drift -> relabel -> retrain -> reload.
UNPAUSE = ("router_pipeline", "router_retraining", "router_drift", "router_drift_relabel")

# Airflow processes, in start order (the compose file has one service per entry).
AIRFLOW_COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "worker-default": ["celery", "worker", "--queues", QUEUES["default"]],
    "worker-gpu": ["celery", "worker", "--queues", QUEUES["gpu"]],
}
# Non-Airflow services (compose: postgres, redis, minio).
SERVICES = ("postgres", "redis", "s3")
# Environment variable names the gateway gets (compose's tela-gateway sets the same ones):
# the artifact store it shares with Airflow.
GATEWAY_ENV_NAMES = (
    "TELA_ARTIFACT_ROOT",
    "TELA_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "TELA_GATEWAY_REDIS_URL",
)
# Environment variable names every Airflow component gets (compose sets the same ones).
AIRFLOW_ENV_NAMES = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "TELA_ARTIFACT_ROOT",
    "TELA_S3_CONN_ID",
    "AIRFLOW_CONN_TELA_S3",
    "TELA_WORKER_NAME",
)


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


class Config:
    def __init__(self, state: Path | None = None):
        self.state = Path(state or os.environ.get("TELA_CLUSTER_DIR") or REPO / ".cluster").resolve()
        self.pg_port = int(os.environ.get("TELA_CLUSTER_PG_PORT", 55432))
        self.redis_port = int(os.environ.get("TELA_CLUSTER_REDIS_PORT", 56379))
        self.api_port = int(os.environ.get("TELA_CLUSTER_API_PORT", 58080))
        self.s3_port = int(os.environ.get("TELA_CLUSTER_S3_PORT", 55000))
        self.gateway_port = int(os.environ.get("TELA_CLUSTER_GATEWAY_PORT", 58000))
        self.env_file = Path(os.environ.get("TELA_CLUSTER_ENV_FILE") or REPO / "cluster.env")
        # Small on purpose: every running task is a process with the library imported.
        self.parallelism = int(os.environ.get("TELA_CLUSTER_PARALLELISM", 6))
        # The default worker runs more tasks at once than the tela_llm pool allows, so the
        # pool (not the worker) is what limits LLM calls.
        self.concurrency = {
            "default": int(os.environ.get("TELA_CLUSTER_DEFAULT_CONCURRENCY", 4)),
            "gpu": int(os.environ.get("TELA_CLUSTER_GPU_CONCURRENCY", 1)),
        }
        self.heartbeat_timeout = int(os.environ.get("TELA_CLUSTER_HEARTBEAT_TIMEOUT", 60))
        self.pids = self.state / "pids"
        self.logs = self.state / "logs"
        self.airflow_home = self.state / "airflow"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    def secrets(self) -> dict:
        path = self.state / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {
            "pg_password": secrets.token_urlsafe(18),
            "redis_password": secrets.token_urlsafe(18),
            "ui_password": secrets.token_urlsafe(12),
            "jwt_secret": secrets.token_urlsafe(48),
            "fernet_key": Fernet.generate_key().decode(),
            "s3_access_key": "tela-app-" + secrets.token_hex(4),
            "s3_secret_key": secrets.token_urlsafe(24),
        }
        self.state.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values

    def airflow_env(self, worker: str | None = None) -> dict:
        s = self.secrets()
        db = f"airflow:{s['pg_password']}@127.0.0.1:{self.pg_port}/airflow"
        conn = {
            "conn_type": "aws",
            "login": s["s3_access_key"],
            "password": s["s3_secret_key"],
            "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"},
        }
        env = {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.state / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            # the TI record names the worker that ran it (both workers share this host)
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tela_worker.worker_hostname",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{s['redis_password']}@127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency.get(worker or "default", 1)),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            "TELA_ARTIFACT_ROOT": f"s3://{BUCKET}/pipeline",
            "TELA_S3_CONN_ID": S3_CONN_ID,
            "AIRFLOW_CONN_TELA_S3": json.dumps(conn),
            "TELA_WORKER_NAME": f"tela-{worker}-worker" if worker else "",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # several tasks share two cores: no thread oversubscription
        }
        url_file = self.state / "local_llm_url"
        if url_file.exists():
            env["TELA_LOCAL_LLM_URL"] = url_file.read_text().strip()
        return env


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _read_pid(cfg: Config, name: str) -> int | None:
    path = cfg.pids / f"{name}.pid"
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def spawn(cfg: Config, name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> int:
    """Start `cmd` in its own process group, log to STATE/logs/NAME.log, record its pid."""
    cfg.pids.mkdir(parents=True, exist_ok=True)
    cfg.logs.mkdir(parents=True, exist_ok=True)
    out = open(cfg.logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=str(cwd or REPO),
        start_new_session=True,
    )
    out.close()
    (cfg.pids / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def stop_process(cfg: Config, name: str, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop the process group `up` recorded for `name` (its children go with it)."""
    pid = _read_pid(cfg, name)
    if pid is None:
        return False
    if _pid_alive(pid):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (cfg.pids / f"{name}.pid").unlink(missing_ok=True)
    return True


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total / 1024


def wait_for(
    what: str, check, timeout: float, *, interval: float = 1.0, proc_name: str | None = None, cfg: Config | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc_name and cfg:
            pid = _read_pid(cfg, proc_name)
            if pid is None or not _pid_alive(pid):
                raise RuntimeError(
                    f"{proc_name} exited while starting; log: {cfg.logs / (proc_name + '.log')}\n"
                    + _tail(cfg.logs / f"{proc_name}.log")
                )
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_json(
    url: str, *, data: dict | None = None, token: str | None = None, method: str | None = None, timeout: float = 10.0
):
    req = urllib.request.Request(url, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    body = json.dumps(data).encode() if data is not None else None
    with urllib.request.urlopen(req, body, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


# --------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------


def ensure_packages() -> None:
    """Install Postgres/Redis from Debian when their binaries are missing (needs root)."""
    missing = []
    if not list(PG_BIN.glob("*/bin/postgres")):
        missing.append(APT_PACKAGES["postgres"])
    if not shutil.which("redis-server"):
        missing.append(APT_PACKAGES["redis-server"])
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def _pg_bin(tool: str) -> str:
    found = sorted(PG_BIN.glob(f"*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"{tool} not found under {PG_BIN}: apt-get install postgresql")
    return str(found[-1])


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, **kw)
    if res.returncode:
        out = (res.stdout or b"") + (res.stderr or b"")
        raise RuntimeError(
            f"{' '.join(cmd[:6])} ... failed ({res.returncode}):\n{out.decode(errors='replace')[-2000:]}"
        )
    return res


def _as_postgres(cmd: list[str]) -> list[str]:
    # Postgres refuses to run as root: run its tools as the `postgres` user the package made.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(cfg: Config) -> None:
    data, sock = cfg.state / "pg" / "data", cfg.state / "pg" / "sock"
    s = cfg.secrets()
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        data.mkdir(parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        pwfile = cfg.state / "pg" / "pwfile"
        pwfile.write_text(s["pg_password"])
        if os.geteuid() == 0:
            shutil.chown(cfg.state / "pg", "postgres", "postgres")
            for p in (data, sock, pwfile):
                shutil.chown(p, "postgres", "postgres")
        _run(
            _as_postgres(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                ]
            )
        )
        pwfile.unlink()
    opts = (
        f"-p {cfg.pg_port} -k {sock} -c listen_addresses=127.0.0.1 -c shared_buffers=32MB "
        "-c max_connections=100 -c fsync=off -c synchronous_commit=off"
    )
    # pg_ctl daemonises the server: record the postmaster's pid from postmaster.pid
    _run(
        _as_postgres(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(cfg.state / "pg" / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
    )
    cfg.pids.mkdir(parents=True, exist_ok=True)
    (cfg.pids / "postgres.pid").write_text((data / "postmaster.pid").read_text().split()[0])
    if fresh:
        psql = _as_postgres(
            [_pg_bin("psql"), "-h", str(sock), "-p", str(cfg.pg_port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        )
        sql = f"CREATE ROLE airflow LOGIN PASSWORD '{s['pg_password']}';\nCREATE DATABASE airflow OWNER airflow;\n"
        _run(psql, input=sql.encode())


def stop_postgres(cfg: Config) -> None:
    data = cfg.state / "pg" / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
    (cfg.pids / "postgres.pid").unlink(missing_ok=True)


def start_redis(cfg: Config) -> None:
    s = cfg.secrets()
    folder = cfg.state / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"  # the password in a 600 file, not on the command line
    conf.write_text(
        f"bind 127.0.0.1\nport {cfg.redis_port}\nrequirepass {s['redis_password']}\n"
        f'dir {folder}\nsave ""\nappendonly no\nprotected-mode yes\nmaxmemory 256mb\n'
    )
    conf.chmod(0o600)
    spawn(cfg, "redis", [shutil.which("redis-server"), str(conf)])
    wait_for("redis", lambda: _port_open(cfg.redis_port), 30, proc_name="redis", cfg=cfg)


def start_s3(cfg: Config) -> None:
    spawn(cfg, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(cfg.s3_port)])
    wait_for("s3", lambda: _port_open(cfg.s3_port), 60, proc_name="s3", cfg=cfg)
    import boto3

    s = cfg.secrets()
    client = boto3.client(
        "s3",
        endpoint_url=cfg.s3_url,
        aws_access_key_id=s["s3_access_key"],
        aws_secret_access_key=s["s3_secret_key"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)


def start_local_llm(cfg: Config) -> None:
    """One model server for every endpoint with base_url "local" (the labeling tasks read
    TELA_LOCAL_LLM_URL and use it instead of starting a server each)."""
    port_file = cfg.state / "local_llm.port"
    port_file.unlink(missing_ok=True)
    spawn(
        cfg,
        "local-llm",
        [
            str(PY),
            "-m",
            "router_tasks.labeling.llm_server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )

    def healthy() -> bool:
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200

    wait_for("local model server", healthy, 900, interval=2, proc_name="local-llm", cfg=cfg)
    (cfg.state / "local_llm_url").write_text(f"http://127.0.0.1:{int(port_file.read_text())}/v1")


# --------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------


def gateway_args(models_file: str, keys_file: str, host: str, port: int) -> list[str]:
    """`tela serve`'s arguments: the one gateway launch command, here and in compose's
    `tela-gateway` service (tests/deployment/test_compose_matches_cluster.py holds them
    equal). It follows the champion, so a new one is served without a restart; callers need
    a key from `keys_file`, and the keys' limits are counted in Redis
    (`TELA_GATEWAY_REDIS_URL`, `gateway_env`), so every replica enforces the same ones."""
    return [
        "serve",
        "--models",
        models_file,
        "--keys",
        keys_file,
        "--router",
        "champion",
        "--host",
        host,
        "--port",
        str(port),
    ]


def gateway_env(cfg: Config) -> dict:
    """The artifact store the gateway shares with Airflow (GATEWAY_ENV_NAMES), as the
    library reads it: the same bucket and S3 app keys as the `tela_s3` connection."""
    s = cfg.secrets()
    return {
        "TELA_ARTIFACT_ROOT": f"s3://{BUCKET}/pipeline",
        "TELA_S3_ENDPOINT_URL": cfg.s3_url,
        "AWS_ACCESS_KEY_ID": s["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        # db 1: Celery's broker is db 0 of the same server
        "TELA_GATEWAY_REDIS_URL": f"redis://:{s['redis_password']}@127.0.0.1:{cfg.redis_port}/1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def gateway_keys(cfg: Config, keys_file: Path | None) -> Path:
    """The callers' keys file: the one given, else one the cluster makes with a key named
    `cluster` (its text in the state folder's `gateway_key`, mode 0600, and in cluster.env
    as TELA_GATEWAY_API_KEY, for scripts and tests)."""
    if keys_file is not None:
        (cfg.state / "gateway_key").unlink(missing_ok=True)
        return keys_file
    from router_tasks.serving.keys import create_key  # pandas-free, but only `up` needs it

    made = cfg.state / "gateway-keys.json"
    made.unlink(missing_ok=True)
    key_file = cfg.state / "gateway_key"
    key_file.write_text(create_key(str(made), "cluster"))
    key_file.chmod(0o600)
    return made


def start_gateway(cfg: Config, models_file: Path, keys_file: Path) -> None:
    """Start `tela serve` on the cluster's store; return once it accepts connections (it
    answers 503 until the first champion is published, then serves it)."""
    args = gateway_args(str(models_file), str(keys_file), "127.0.0.1", cfg.gateway_port)
    spawn(cfg, "gateway", [str(BIN / "tela"), *args], env=gateway_env(cfg))
    wait_for("gateway", lambda: _port_open(cfg.gateway_port), 180, proc_name="gateway", cfg=cfg)
    (cfg.state / "gateway_url").write_text(cfg.gateway_url)


# --------------------------------------------------------------------------------------
# Airflow
# --------------------------------------------------------------------------------------


def airflow(cfg: Config, *args: str, worker: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        env={**os.environ, **cfg.airflow_env(worker)},
        capture_output=True,
        text=True,
        check=check,
        cwd=str(REPO),
    )


def init_airflow(cfg: Config) -> None:
    cfg.airflow_home.mkdir(parents=True, exist_ok=True)
    pw = cfg.state / "passwords.json"
    pw.write_text(json.dumps({USER: cfg.secrets()["ui_password"]}))
    pw.chmod(0o600)
    res = airflow(cfg, "db", "migrate", check=False)
    if res.returncode:
        raise RuntimeError(f"airflow db migrate failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    # the pools the DAGs use (a task in a missing pool is never scheduled)
    subprocess.run(
        [str(PY), str(REPO / "plugins" / "tela_pools.py")],
        env={**os.environ, **cfg.airflow_env()},
        check=True,
        capture_output=True,
        cwd=str(REPO),
    )


def api_token(cfg: Config) -> str:
    return _http_json(f"{cfg.api_url}/auth/token", data={"username": USER, "password": cfg.secrets()["ui_password"]})[
        "access_token"
    ]


def start_component(cfg: Config, name: str) -> int:
    """Start one Airflow component of AIRFLOW_COMPONENTS (also: bring back a lost worker)."""
    worker = name.split("-", 1)[1] if name.startswith("worker-") else None
    cmd = [str(BIN / "airflow"), *AIRFLOW_COMPONENTS[name]]
    if worker:
        cmd += ["--concurrency", str(cfg.concurrency[worker]), "--celery-hostname", f"{worker}@%h"]
    return spawn(cfg, name, cmd, env=cfg.airflow_env(worker))


def start_airflow(cfg: Config) -> None:
    for name in AIRFLOW_COMPONENTS:
        start_component(cfg, name)
        if name == "api-server":  # the others report their health through it
            wait_for(
                "api-server",
                lambda: _http_json(f"{cfg.api_url}/api/v2/monitor/health"),
                180,
                interval=2,
                proc_name=name,
                cfg=cfg,
            )


def health(cfg: Config) -> dict:
    return _http_json(f"{cfg.api_url}/api/v2/monitor/health")


def workers(cfg: Config) -> dict[str, list[str]]:
    """Celery worker name -> the queues it consumes, asked of the workers over the broker."""
    res = airflow(cfg, "celery", "list-workers", "-o", "json", check=False)
    if res.returncode:
        return {}
    start = res.stdout.find("[")
    return {w["worker_name"]: w["queues"] for w in json.loads(res.stdout[start:] or "[]")}


def wait_healthy(cfg: Config, timeout: float = 300) -> None:
    def components_ok() -> bool:
        h = health(cfg)
        return all(
            h.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    names = [n for n in AIRFLOW_COMPONENTS if n != "api-server"]
    deadline = time.monotonic() + timeout
    wait_for("scheduler, dag-processor, triggerer", components_ok, timeout, interval=2)
    for name in names:  # and none of them died on the way
        if not _pid_alive(_read_pid(cfg, name) or -1):
            raise RuntimeError(f"{name} is not running; log:\n{_tail(cfg.logs / (name + '.log'))}")

    def queues_ok() -> bool:
        consumed = {q for qs in workers(cfg).values() for q in qs}
        return set(QUEUES.values()) <= consumed

    wait_for("celery workers on queues default and gpu", queues_ok, max(30.0, deadline - time.monotonic()), interval=3)


def unpause_consumers(cfg: Config, timeout: float = 240) -> None:
    """Asset events for a paused consumer are dropped: unpause the DAGs we rely on once the
    dag-processor has parsed them."""
    token = api_token(cfg)

    def parsed() -> bool:
        dags = {d["dag_id"] for d in _http_json(f"{cfg.api_url}/api/v2/dags?limit=100", token=token)["dags"]}
        return set(UNPAUSE) <= dags

    wait_for("DAGs parsed", parsed, timeout, interval=3)
    for dag_id in UNPAUSE:
        _http_json(f"{cfg.api_url}/api/v2/dags/{dag_id}", data={"is_paused": False}, token=token, method="PATCH")


def write_env_file(cfg: Config) -> None:
    s = cfg.secrets()
    lines = {
        "AIRFLOW_URL": cfg.api_url,
        "AIRFLOW_USER": USER,
        "AIRFLOW_PASSWORD": s["ui_password"],
        "TELA_ARTIFACT_ROOT": f"s3://{BUCKET}/pipeline",
        "TELA_S3_ENDPOINT_URL": cfg.s3_url,
        "AWS_ENDPOINT_URL": cfg.s3_url,
        "AWS_ACCESS_KEY_ID": s["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "TELA_CLUSTER_DIR": str(cfg.state),
    }
    url_file = cfg.state / "local_llm_url"
    if url_file.exists():
        lines["TELA_LOCAL_LLM_URL"] = url_file.read_text().strip()
    gateway_file = cfg.state / "gateway_url"
    if gateway_file.exists():
        lines["TELA_GATEWAY_URL"] = gateway_file.read_text().strip()
    key_file = cfg.state / "gateway_key"
    if gateway_file.exists() and key_file.exists():
        lines["TELA_GATEWAY_API_KEY"] = key_file.read_text().strip()
    cfg.env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    cfg.env_file.chmod(0o600)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def started_names(cfg: Config) -> list[str]:
    return sorted(p.stem for p in cfg.pids.glob("*.pid")) if cfg.pids.exists() else []


def check_gateway_models(path: str) -> Path:
    """The --gateway-models file, parsed as `tela serve` will parse it (fail before starting anything)."""
    # here, not at the top: it brings pandas and pyarrow, which `down` and `status` do not need
    from router_tasks.serving.config import parse_models_arg

    file = Path(path).resolve()
    if not file.is_file():
        raise SystemExit(f"--gateway-models {path}: no such file (a JSON list of upstream endpoints)")
    try:
        parse_models_arg(str(file))
    except ValueError as err:
        raise SystemExit(f"--gateway-models {path}: {err}") from None
    return file


def check_gateway_keys(path: str) -> Path:
    """The --gateway-keys file, read as `tela serve --keys` will read it."""
    from router_tasks.serving.keys import read_keys_file

    file = Path(path).resolve()
    if not file.is_file():
        raise SystemExit(
            f"--gateway-keys {path}: no such file (create one with `tela keys create --file {path} --name NAME`)"
        )
    try:
        read_keys_file(str(file))
    except (OSError, ValueError) as err:
        raise SystemExit(f"--gateway-keys {path}: {err}") from None
    return file


def up(
    cfg: Config, *, local_llm: bool = True, gateway_models: str | None = None, gateway_keys_file: str | None = None
) -> float:
    started = time.monotonic()
    live = [n for n in started_names(cfg) if _pid_alive(_read_pid(cfg, n) or -1)]
    if live:
        raise SystemExit(f"already running ({', '.join(live)}): `make cluster-down` first")
    models_file = check_gateway_models(gateway_models) if gateway_models else None
    given_keys = check_gateway_keys(gateway_keys_file) if gateway_keys_file else None
    ports = (cfg.pg_port, cfg.redis_port, cfg.api_port, cfg.s3_port) + ((cfg.gateway_port,) if models_file else ())
    for port in ports:
        if _port_open(port):
            raise SystemExit(f"port {port} is taken by another process; set TELA_CLUSTER_*_PORT")
    ensure_packages()
    (cfg.state / "local_llm_url").unlink(missing_ok=True)
    (cfg.state / "gateway_url").unlink(missing_ok=True)
    try:
        log("postgres, redis, s3 (moto)")
        start_postgres(cfg)
        start_redis(cfg)
        start_s3(cfg)
        if local_llm:
            log("shared local model server")
            start_local_llm(cfg)
        log("airflow db migrate + pools")
        init_airflow(cfg)
        log("api-server, scheduler, dag-processor, triggerer, 2 celery workers")
        start_airflow(cfg)
        wait_healthy(cfg)
        unpause_consumers(cfg)
        if models_file:
            log(f"gateway on {cfg.gateway_url} (upstreams from {models_file})")
            start_gateway(cfg, models_file, gateway_keys(cfg, given_keys))
        write_env_file(cfg)
    except BaseException:
        log("start failed: stopping what was started")
        down(cfg, quiet=True)
        raise
    took = time.monotonic() - started
    s = cfg.secrets()
    log(f"healthy after {took:.0f} s")
    gateway = f"  gateway:    {cfg.gateway_url}   (OpenAI-compatible; 503 until a champion is published)\n"
    print(
        f"\n  Airflow UI: {cfg.api_url}   login: {USER} / {s['ui_password']}\n"
        f"  S3 (moto):  {cfg.s3_url}   bucket {BUCKET}\n{gateway if models_file else ''}"
        f"  settings for scripts: {cfg.env_file}\n  stop: make cluster-down\n",
        flush=True,
    )
    return took


def down(cfg: Config, *, quiet: bool = False) -> None:
    # workers first (they finish or abandon tasks), the DB last
    order = [
        "gateway",
        "worker-default",
        "worker-gpu",
        "triggerer",
        "dag-processor",
        "scheduler",
        "api-server",
        "local-llm",
        "s3",
        "redis",
    ]
    names = started_names(cfg)
    for name in order + [n for n in names if n not in order and n != "postgres"]:
        if name in names and stop_process(cfg, name) and not quiet:
            log(f"stopped {name}")
    if "postgres" in names or (cfg.state / "pg" / "data" / "postmaster.pid").exists():
        stop_postgres(cfg)
        if not quiet:
            log("stopped postgres")
    (cfg.state / "local_llm_url").unlink(missing_ok=True)
    (cfg.state / "gateway_url").unlink(missing_ok=True)
    (cfg.state / "gateway_key").unlink(missing_ok=True)
    cfg.env_file.unlink(missing_ok=True)


def status(cfg: Config) -> dict:
    out = {}
    for name in started_names(cfg):
        pid = _read_pid(cfg, name)
        alive = pid is not None and _pid_alive(pid)
        out[name] = {"pid": pid, "alive": alive, "rss_mb": round(tree_rss_mb(pid), 1) if alive else 0.0}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start every component; return once all are healthy")
    u.add_argument(
        "--no-local-llm", action="store_true", help="no shared SmolLM2 server (endpoints use their own URLs)"
    )
    u.add_argument(
        "--gateway-models",
        metavar="FILE",
        help="start the routing gateway (tela serve) on these upstream endpoints (a JSON list, as the "
        "pipeline's models param); their keys from this environment",
    )
    u.add_argument(
        "--gateway-keys",
        metavar="KEYS",
        help="the callers' keys file (tela keys create); default: one key named 'cluster', its text in "
        "cluster.env as TELA_GATEWAY_API_KEY",
    )
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="pid, liveness and memory of each component")
    st = sub.add_parser("start", help="start one Airflow component again (e.g. a worker that was lost)")
    st.add_argument("component", choices=sorted(AIRFLOW_COMPONENTS))
    a = p.parse_args(argv)
    cfg = Config()
    if a.cmd == "up":
        up(cfg, local_llm=not a.no_local_llm, gateway_models=a.gateway_models, gateway_keys_file=a.gateway_keys)
    elif a.cmd == "down":
        down(cfg)
    elif a.cmd == "start":
        pid = _read_pid(cfg, a.component)
        if pid is not None and _pid_alive(pid):
            raise SystemExit(f"{a.component} is running (pid {pid})")
        print(start_component(cfg, a.component))
    else:
        st = status(cfg)
        for name, row in st.items():
            print(f"{name:16s} pid {row['pid']!s:>8}  {'up  ' if row['alive'] else 'DOWN'}  {row['rss_mb']:8.1f} MiB")
        if not st:
            print("not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
