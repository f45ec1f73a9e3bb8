"""`tela serve | keys | drift`: the routing gateway, its client keys, and traffic drift."""

from __future__ import annotations

import os
import sys

from router_tasks.cli.base import Context, command, json_arg


def _serve_args(s):
    s.add_argument(
        "--router", default="champion", help="'champion' (followed: hot reload when it moves) or a router key/URI"
    )
    s.add_argument(
        "--models",
        required=True,
        help="upstream endpoints: a JSON list or a .json file of one, as the pipeline's `models` param",
    )
    auth = s.add_mutually_exclusive_group()
    auth.add_argument("--keys", metavar="KEYS", help="client keys file (tela keys create): every /v1 request needs one")
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without client keys (anyone who reaches the port spends the upstreams' keys)",
    )
    s.add_argument(
        "--redis-url",
        default=os.environ.get("TELA_GATEWAY_REDIS_URL"),
        help="keep the keys' rpm/spend counters in Redis, shared by replicas and workers "
        "(e.g. redis://127.0.0.1:6379/0; default $TELA_GATEWAY_REDIS_URL, which keeps a "
        "password out of the process list)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes on the one port (shared-nothing; each hot-reloads the champion)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    s.add_argument(
        "--route-chars",
        type=int,
        default=4096,
        help="prompt characters a router reads when it names no limit of its own",
    )
    s.add_argument(
        "--no-prompt-log",
        action="store_true",
        help="traffic log keeps prompt ids, not prompt text (and feedback keeps no comments)",
    )
    s.add_argument("--no-traffic-log", action="store_true", help="write no traffic log at all")
    s.add_argument("--reload-s", type=float, default=10.0, help="how often to look for a new champion/calibration")
    s.add_argument("--cooldown-fails", type=int, default=3, help="failures in a row that cool an upstream down")
    s.add_argument("--cooldown-s", type=float, default=30.0, help="how long an upstream stays cooled down")
    s.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn's access log)")


@command("serve", "OpenAI-compatible routing gateway over the champion router", _serve_args)
def serve(args, ctx: Context) -> int:
    from router_tasks.serving.config import GatewayConfig, parse_models_arg
    from router_tasks.serving.server import serve as run_gateway

    if not args.keys and not args.no_auth:
        raise ValueError(
            "give --keys KEYS (create keys with `tela keys create --file KEYS --name NAME`) or "
            "--no-auth to serve without client keys"
        )
    config = GatewayConfig(
        parse_models_arg(args.models),
        router=args.router,
        artifact_root=ctx.root,
        keep_prompts=not args.no_prompt_log,
        log_traffic=not args.no_traffic_log,
        reload_s=args.reload_s,
        cooldown_fails=args.cooldown_fails,
        cooldown_s=args.cooldown_s,
        keys_file=args.keys,
        redis_url=args.redis_url,
        workers=args.workers,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        route_chars=args.route_chars,
    )
    run_gateway(config, host=args.host, port=args.port, access_log=args.access_log)
    return 0


def _keys_args(s):
    sub = s.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="add a key; prints it once (the key alone on stdout's last line)")
    create.add_argument("--file", required=True, help="the KEYS file (created if missing; holds hashes only)")
    create.add_argument("--name", required=True, help="the name logs and metrics show for this key")
    create.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    create.add_argument("--usd-per-day", type=float, help="upstream dollars per UTC day, from the endpoint prices")
    listing = sub.add_parser("list", help="the keys' names, limits and dates (never a key or a hash)")
    listing.add_argument("--file", required=True)
    revoke = sub.add_parser("revoke", help="revoke the active key of a name (a running gateway sees it within seconds)")
    revoke.add_argument("--file", required=True)
    revoke.add_argument("--name", required=True)


@command("keys", "client keys for `tela serve --keys`: create, list, revoke", _keys_args)
def keys(args, ctx: Context) -> int:
    from router_tasks.serving import keys as client_keys

    if args.keys_command == "create":
        key = client_keys.create_key(args.file, args.name, rpm=args.rpm, usd_per_day=args.usd_per_day)
        limits = (
            ", ".join(
                x
                for x in (args.rpm and f"{args.rpm} requests/minute", args.usd_per_day and f"${args.usd_per_day:g}/day")
                if x
            )
            or "no limits"
        )
        print(
            f"created key {args.name!r} ({limits}) in {args.file}; this is the only time it is shown:", file=sys.stderr
        )
        print(key)
        return 0
    if args.keys_command == "list":
        return ctx.emit(client_keys.list_keys(args.file))
    return ctx.emit(client_keys.revoke_key(args.file, args.name))


def _drift_args(s):
    s.add_argument("--router", default="champion")
    s.add_argument("--hours", type=float, default=1.0, help="window length, ending now (or at --end)")
    s.add_argument("--end", help="window end, ISO time (default: now)")
    s.add_argument("--settings", type=json_arg, default={}, help='JSON drift settings, e.g. {"alpha": 0.001}')


@command("drift", "compare the latest traffic window with the router's training prompts", _drift_args)
def drift(args, ctx: Context) -> int:
    from router_tasks.serving.drift import check_latest_window

    return ctx.emit(
        check_latest_window(
            window_end=args.end, hours=args.hours, router=args.router, settings=args.settings, artifact_root=ctx.root
        )
    )
