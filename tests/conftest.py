"""Shared fixtures: a real S3 API (moto's server over HTTP on 127.0.0.1), artifact stores,
and an isolated Airflow home for DAG tests."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `dags` importable in tests
sys.path.insert(0, str(REPO / "plugins"))  # as Airflow puts it on sys.path

# Offline everywhere: a test that tries to reach a model hub must fail, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Airflow reads its config on first import: give the test session its own home and
# SQLite DB (never the demo's), with our dags/ and plugins/ folders.
_AIRFLOW_HOME = Path(os.environ.get("TELA_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="tela-airflow-"))
if not os.environ.get("TELA_TEST_AIRFLOW_HOME"):  # ours, not the caller's: gone with the session
    atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated SQLite metadata DB for this test session (about 5 s, once), with the
    pools the DAGs use (`defaults.POOLS`), as `make airflow-db` sets them up."""
    if not (_AIRFLOW_HOME / "airflow.db").exists():
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            check=True,
            capture_output=True,
            env=os.environ.copy(),
        )
    from tela_pools import ensure_pools  # plugins/

    ensure_pools()
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on a free loopback port, speaking HTTP like MinIO or AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "TELA_S3_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        TELA_S3_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_root(moto_server):
    """A fresh bucket on the moto server; returns the s3:// artifact root."""
    import boto3

    bucket = f"tela-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/artifacts"


@pytest.fixture
def local_root(tmp_path):
    return str(tmp_path / "artifacts")


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path):
    """Run a test once against a local folder and once against the S3 server."""
    if request.param == "local":
        return str(tmp_path / "artifacts")
    return request.getfixturevalue("s3_root")


# --- routers, embeddings, train, scoring ----------------------------------------------
# A toy labels set with a known answer: on the EASY prompts every model is right, on the
# HARD ones only the strong model is. A trained router must send unseen hard prompts to
# the strong model more than unseen easy ones. "smollm2" is labelled on some prompts only.
ROUTER_STRONG = "gpt-4-1106-preview"
ROUTER_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTER_EASY = [
    "What is 2 + 2?",
    "What is 3 + 5?",
    "What is 10 minus 4?",
    "What is 7 times 2?",
    "What color is the sky on a clear day?",
    "Say hello in French.",
    "What is the capital of France?",
    "How many days are in a week?",
    "Spell the word cat.",
    "Name a fruit that is yellow.",
    "What is the opposite of hot?",
    "How many legs does a dog have?",
]
ROUTER_HARD = [
    "Prove that there are infinitely many primes of the form 4k+3 with a rigorous argument.",
    "Derive the Euler-Lagrange equations for a relativistic charged particle in an electromagnetic field.",
    "Prove the spectral theorem for compact self-adjoint operators on a Hilbert space.",
    "Compute the Galois group of x^5 - 4x + 2 over the rationals and justify each step.",
    "Show that the fundamental group of the figure-eight space is the free group on two generators.",
    "Derive the Black-Scholes partial differential equation from Ito's lemma.",
    "Prove that every finite integral domain is a field and generalize the argument to Artinian rings.",
    "Solve the heat equation on a semi-infinite rod with a Robin boundary condition using Laplace transforms.",
    "Prove the Cauchy-Schwarz inequality in an arbitrary inner product space and characterize equality.",
    "Prove the Banach fixed-point theorem and apply it to Picard iteration for ordinary differential equations.",
    "Derive the one-loop renormalization group equation for the coupling in phi^4 theory.",
    "Prove all three Sylow theorems for finite groups.",
]
# unseen prompts for the known-answer checks
ROUTER_EASY_QUERY = "What is 4 + 4?"
ROUTER_HARD_QUERY = "Prove the Stone-Weierstrass theorem rigorously for compact Hausdorff spaces."


@pytest.fixture(scope="session")
def minilm():
    """The MiniLM encoder, loaded once per test session (~5-10 s on 2 cores)."""
    from router_tasks.routers.embeddings import get_encoder

    return get_encoder()


@pytest.fixture(scope="session")
def router_toy_labels(minilm):
    """Labels table (prompt_id, prompt, model, score, correct, quality, source, benchmark)."""
    from factories import labels_table

    def outcome(i, text):
        hard = text in ROUTER_HARD
        right = {ROUTER_STRONG: True, ROUTER_WEAK: not hard}
        if i % 2 == 0:
            right["smollm2"] = not hard
        return right

    return labels_table(ROUTER_EASY + ROUTER_HARD, outcome, source="test:toy")


@pytest.fixture
def router_labels_artifact():
    """`make(df, root) -> ref`: store a labels table as a (validate-like) stage artifact."""
    from router_tasks.core.stage import run_stage, stable_hash
    from router_tasks.core.store import ArtifactStore

    def make(df, root):
        content = df.to_json(orient="records")  # key by content: different tables never collide
        return run_stage(
            "labels_fixture",
            "1",
            lambda ctx: ctx.write_table(df),
            config={"content": stable_hash(content)},
            store=ArtifactStore(root),
        )

    return make


@pytest.fixture
def random_router():
    """`make(root, name) -> train ref`: a real (random, instant) router for the pair big /
    small on a few own labels; each name gets its own seed, so its own artifact."""
    import hashlib

    import pandas as pd

    from router_tasks.core.prompts import prompt_id
    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore
    from router_tasks.training.train import train_router

    def make(root, name):
        texts = [f"a prompt the team sent, number {i}" for i in range(12)]
        df = pd.DataFrame(
            [
                dict(
                    prompt_id=prompt_id(t),
                    prompt=t,
                    model=m,
                    score=None,
                    correct=None,
                    quality=q,
                    source="generated:team",
                    benchmark="own",
                )
                for i, t in enumerate(texts)
                for m, q in (("big", 1.0), ("small", float(i % 2)))
            ]
        )
        labels = run_stage(
            "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"few": 12}, store=ArtifactStore(root)
        )
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        return train_router(
            labels,
            router_type="random",
            strong_model="big",
            weak_model="small",
            router_params={"seed": seed},
            artifact_root=root,
        )

    return make
