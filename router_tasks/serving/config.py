"""What a gateway process is told at start: `GatewayConfig`, built from `tela serve`'s
arguments, and its round trip through the environment for `--workers` processes (each
worker builds its app from `TELA_GATEWAY_CONFIG`, a JSON text that names environment
variables for upstream keys but holds no secret)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from router_tasks.core.endpoints import Endpoint, parse_endpoints

#: the environment variable a worker process reads its GatewayConfig from
CONFIG_ENV = "TELA_GATEWAY_CONFIG"
#: request bodies larger than this get 413 (`--max-body-mb`): long-context prompts fit, a
#: runaway upload does not
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: characters of the prompt a router reads when it names no limit of its own
#: (`max_prompt_chars`): more than the embedding models read, so a decision is the same
#: as on the whole prompt, and no prompt costs more to route than a long one
DEFAULT_ROUTE_CHARS = 4096


def parse_models_arg(value) -> list[Endpoint]:
    """MODELS as the pipeline takes it: a JSON list (text or parsed) or a .json file of one."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            try:
                with open(text) as fh:
                    text = fh.read()
            except OSError as err:
                raise ValueError(f"--models: {value!r} is neither a JSON list nor a readable file ({err})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--models: not valid JSON ({err.msg} at char {err.pos})") from None
    return parse_endpoints(value, where="models")


@dataclass
class GatewayConfig:
    endpoints: list[Endpoint]
    router: str = "champion"
    artifact_root: str | None = None
    keep_prompts: bool = True  # traffic log keeps prompt text (and feedback comments)
    log_traffic: bool = True
    reload_s: float = 10.0
    cooldown_fails: int = 3
    cooldown_s: float = 30.0
    max_batch: int = 64
    traffic_flush_s: float = 10.0
    # torch intra-op threads for routing. One: a single-prompt embedding gains nothing from
    # more, and OpenMP workers spinning against the event loop and the upstream I/O slow
    # every one-prompt embedding down on a busy machine. None: torch's default.
    torch_threads: int | None = 1
    # client keys: a KEYS file (`tela keys create`); None serves without keys (the CLI
    # asks for --no-auth to say so)
    keys_file: str | None = None
    keys_reload_s: float = 2.0  # how often the KEYS file is checked for changes (revocations)
    redis_url: str | None = None  # shared rpm/spend counters; None: in this process
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    route_chars: int = DEFAULT_ROUTE_CHARS  # used when the router names no max_prompt_chars
    workers: int = 1
    trim_s: float = 60.0  # how often freed heap memory is returned to the system (0: never)

    def __post_init__(self):
        if self.max_body_bytes < 1024:
            raise ValueError(f"max body size must be at least 1 KiB, got {self.max_body_bytes} bytes")
        if self.route_chars < 16:
            raise ValueError(f"route_chars must be at least 16, got {self.route_chars}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and self.keys_file is not None and not self.redis_url:
            raise ValueError(
                f"--workers {self.workers} with --keys needs --redis-url: each worker process would "
                f"count rpm and spend on its own, so every key's limits would be {self.workers}x "
                "what KEYS says"
            )

    def to_env(self) -> str:
        """JSON for CONFIG_ENV: endpoints as dicts (key variable names, never keys)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["endpoints"] = [asdict(ep) for ep in self.endpoints]
        return json.dumps(data)

    @classmethod
    def from_env(cls, environ=os.environ) -> GatewayConfig:
        text = environ.get(CONFIG_ENV)
        if not text:
            raise RuntimeError(f"{CONFIG_ENV} is not set: start gateway workers with `tela serve --workers N`")
        data = json.loads(text)
        data["endpoints"] = parse_models_arg(data["endpoints"])
        return cls(**data)
