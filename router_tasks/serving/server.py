"""Running the gateway: under uvicorn in this process, in N worker processes on one port,
or in a thread (tests, benchmarks).

`--workers N` starts N shared-nothing processes under uvicorn's supervisor, which binds
the port once and hands the socket to each; the kernel spreads connections over them and
the supervisor restarts a worker that dies. Each worker builds its own app with
`app_from_env` from the GatewayConfig in `TELA_GATEWAY_CONFIG` (JSON, no secrets), loads
the router itself and hot-reloads the champion on its own; they share nothing but the
artifact store and, with `--redis-url`, the keys' counters. A worker writes its own
traffic-log segments (their names never collide), so a window read sees all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from router_tasks.serving.config import CONFIG_ENV, GatewayConfig
from router_tasks.serving.gateway import Gateway, create_app

log = logging.getLogger(__name__)


def configure_logging() -> None:
    """The gateway's own lines (start, reloads, cooldowns) at INFO; the libraries it calls
    stay at WARNING, so nothing logs per request."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("router_tasks.serving").setLevel(logging.INFO)


def app_from_env():
    """The app factory each `--workers` process calls (`uvicorn ... --factory`)."""
    configure_logging()
    return create_app(GatewayConfig.from_env())


def serve(config: GatewayConfig, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    """Serve until stopped (SIGINT/SIGTERM: in-flight requests finish, the logs are flushed)."""
    import uvicorn

    configure_logging()
    common = dict(host=host, port=port, access_log=access_log, log_level="info", timeout_graceful_shutdown=30)
    if config.workers == 1:
        uvicorn.run(create_app(config), **common)
        return
    os.environ[CONFIG_ENV] = config.to_env()
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=config.workers, **common)


@dataclass
class RunningGateway:
    server: object
    thread: threading.Thread
    app: object = None
    base_url: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_in_thread(config: GatewayConfig, host: str = "127.0.0.1", port: int = 0) -> RunningGateway:
    """Start the gateway under uvicorn in a daemon thread (tests, benchmarks); returns once
    it accepts requests. `stop()` shuts it down cleanly."""
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="tela-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start (see the log)")
        time.sleep(0.02)
    sock_port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(server, thread, app, f"http://{host}:{sock_port}/v1")
