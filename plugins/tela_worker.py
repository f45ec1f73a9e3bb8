"""Airflow-only glue: the hostname a task instance records (`[core] hostname_callable`).

Several Celery workers can share one host (the `default` and `gpu` workers of `make
cluster`); each gets TELA_WORKER_NAME in its environment, and the task instance's
`hostname` then names the worker that ran it (`tela-gpu-worker@host`), visible in the
UI and the REST API. Without the variable it is the host's FQDN, Airflow's default.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    fqdn = socket.getfqdn()
    name = os.environ.get("TELA_WORKER_NAME")
    return f"{name}@{fqdn}" if name else fqdn
