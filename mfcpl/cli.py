"""The ``mfcpl`` command: serve, migrate, operator commands over HTTP, and the SDK's tools (imported lazily,
so the coordinator commands never import torch)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8080"

# Subcommands handed whole to other modules: name -> (module, function).
PASS_THROUGH = {
    "client": ("client_sdk.node", "main"),
    "simulate": ("mfcpl.experiments.cli", "simulate_main"),
    "sweep": ("mfcpl.experiments.cli", "sweep_main"),
}


def _pass_through(name: str, argv: list[str]) -> int:
    module_name, function = PASS_THROUGH[name]
    entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), function)
    return int(entry(argv) or 0)


def _operator_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--server", default=os.environ.get("MFCPL_SERVER_URL", DEFAULT_SERVER),
                        help="coordinator URL (env MFCPL_SERVER_URL)")
    parent.add_argument(
        "--token", default=None, help="admin token (env MFCPL_ADMIN_TOKEN, else <data_dir>/admin_token)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcpl", description="mfcpl coordinator and tools")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the coordinator (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from allowed proxies")
    serve.add_argument("--forwarded-allow-ips", default=None, help="proxies trusted for X-Forwarded-* headers")
    serve.add_argument("--timeout-keep-alive", type=int, default=5)
    serve.add_argument("--log-level", default="info")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="upgrade the schema to the latest migration (idempotent)")
    db_sub.add_parser("current", help="print the schema revision and the head revision")

    operator = _operator_parent()
    federation = sub.add_parser("federation", help="operator: federations")
    fed_sub = federation.add_subparsers(dest="federation_command", required=True)
    create = fed_sub.add_parser("create", parents=[operator], help="create a federation from a JSON config")
    create.add_argument("--file", required=True, type=Path, help="FederationCreate JSON ('-' for stdin)")
    fed_sub.add_parser("list", parents=[operator], help="list federations")
    upload = fed_sub.add_parser("upload-model", parents=[operator], help="upload model version 0 (safetensors)")
    upload.add_argument("--federation", required=True)
    upload.add_argument("--file", required=True, type=Path)
    for action in ("pause", "resume", "cancel"):
        fed_action = fed_sub.add_parser(action, parents=[operator], help=f"{action} a federation")
        fed_action.add_argument("--federation", required=True)

    client = sub.add_parser("client", help="operator: enrol clients; otherwise runs an edge node (client_sdk.node)",
                            add_help=False)
    client.add_argument("rest", nargs=argparse.REMAINDER)
    for name in ("simulate", "sweep"):
        tool = sub.add_parser(name, help=f"client_sdk experiments: {name}", add_help=False)
        tool.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _enroll_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcpl client enroll", parents=[_operator_parent()],
                                     description="enrol a client; prints its id and token (shown once)")
    parser.add_argument("--federation", required=True)
    parser.add_argument("--name", required=True)
    return parser


def _admin_token(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MFCPL_ADMIN_TOKEN"):
        return os.environ["MFCPL_ADMIN_TOKEN"]
    from coordinator.settings import Settings

    path = Settings().admin_token_file
    if path.exists():
        return path.read_text().strip()
    raise SystemExit("no admin token: pass --token, set MFCPL_ADMIN_TOKEN, or run where <data_dir>/admin_token is")


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {_admin_token(args.token)}", **kwargs.pop("headers", {})}
    with httpx.Client(base_url=args.server.rstrip("/") + "/v1", headers=headers, timeout=60) as http:
        response = http.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            problem = response.json()
            message = f"{problem.get('code')}: {problem.get('detail')}"
        except ValueError:
            message = response.text
        raise SystemExit(f"error {response.status_code} from {method} {path}: {message}")
    return response.json()


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from coordinator.settings import Settings, ensure_admin_token

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    token = ensure_admin_token(settings)
    os.environ["MFCPL_ADMIN_TOKEN"] = token  # workers build their Settings from the environment
    if settings.auto_migrate:
        from coordinator.db.engine import make_engine
        from coordinator.db.migrate import upgrade

        engine = make_engine(settings.db_url)
        upgrade(engine)
        engine.dispose()
    options: dict[str, Any] = {
        "host": args.host, "port": args.port, "workers": args.workers, "factory": True,
        "proxy_headers": args.proxy_headers, "timeout_keep_alive": args.timeout_keep_alive,
        "log_level": args.log_level, "http": "httptools",
    }
    if args.forwarded_allow_ips:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    uvicorn.run("coordinator.app:create_app", **options)
    return 0


def _db(args: argparse.Namespace) -> int:
    from coordinator.db.engine import make_engine
    from coordinator.db.migrate import current_revision, head_revision, upgrade
    from coordinator.settings import Settings

    engine = make_engine(Settings().db_url)
    try:
        if args.db_command == "upgrade":
            print(f"schema at {upgrade(engine)}")
        else:
            with engine.connect() as conn:
                print(f"current {current_revision(conn)} head {head_revision()}")
    finally:
        engine.dispose()
    return 0


def _federation(args: argparse.Namespace) -> int:
    command = args.federation_command
    if command == "create":
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        _print(_request(args, "POST", "/federations", json=json.loads(text)))
    elif command == "list":
        _print(_request(args, "GET", "/federations"))
    elif command == "upload-model":
        _print(_request(args, "POST", f"/federations/{args.federation}/models", content=args.file.read_bytes(),
                        headers={"Content-Type": "application/vnd.safetensors"}))
    else:
        _print(_request(args, "POST", f"/federations/{args.federation}/{command}"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("simulate", "sweep"):
        return _pass_through(argv[0], argv[1:])
    if argv and argv[0] == "client":
        if len(argv) > 1 and argv[1] == "enroll":
            args = _enroll_parser().parse_args(argv[2:])
            enrolled = _request(args, "POST", f"/federations/{args.federation}/clients", json={"name": args.name})
            _print({"id": enrolled["id"], "federation_id": enrolled["federation_id"], "name": enrolled["name"],
                    "token": enrolled["token"]})
            return 0
        return _pass_through("client", argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "db":
        return _db(args)
    if args.command == "federation":
        return _federation(args)
    raise AssertionError(args.command)
