"""The ``mfcpl`` command: serve, migrate, operator commands over HTTP, and the SDK's tools (imported lazily,
so the coordinator commands never import torch).

Each command imports only what it needs: the operator commands need the base install (httpx), ``serve`` and
``db`` the ``server`` extra, ``client run``, ``simulate`` and ``sweep`` the ``client`` extra (torch). A missing
extra ends the command with exit status 2 and a message naming the extra, not a traceback.
"""

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
EXIT_MISSING_EXTRA = 2

# Subcommands handed whole to other modules: name -> (module, function).
PASS_THROUGH = {
    "client": ("client_sdk.node", "main"),
    "simulate": ("mfcpl.experiments.cli", "simulate_main"),
    "sweep": ("mfcpl.experiments.cli", "sweep_main"),
}

# The optional dependencies, by extra (import names). `serve` needs all of SERVER_MODULES, `db` the database part.
SERVER_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings", "prometheus_client")
DB_MODULES = ("sqlalchemy", "alembic", "pydantic_settings")
EXTRA_OF_MODULE = {
    **dict.fromkeys(SERVER_MODULES + ("starlette", "psycopg"), "server"),
    "torch": "client",
    "transformers": "text",
    "matplotlib": "plots",
}


def _missing_extra(command: str, extra: str, module: str | None) -> int:
    print(f"{command} needs the {extra} extra: pip install 'mfcpl[{extra}]' (missing module: {module})",
          file=sys.stderr)
    return EXIT_MISSING_EXTRA


def _require(command: str, modules: Sequence[str]) -> None:
    """Import ``modules`` now; when one is not installed, exit 2 with the extra that provides it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            root = (error.name or name).partition(".")[0]
            raise SystemExit(_missing_extra(command, EXTRA_OF_MODULE.get(root, EXTRA_OF_MODULE[name]), root)) from None


def _pass_through_needs(name: str, argv: list[str]) -> tuple[str, ...]:
    """The modules a pass-through command needs before it starts (help and table-only modes need none)."""
    if {"-h", "--help"} & set(argv):
        return ()
    if name == "client":
        return ("torch",) if argv[:1] == ["run"] else ()
    if name == "sweep" and {"--table-only", "--dry-run"} & set(argv):
        return ()
    embedded_coordinator = not ({"--in-process", "--server"} & {a.split("=", 1)[0] for a in argv})
    return ("torch",) + (SERVER_MODULES if embedded_coordinator else ())


def _pass_through(name: str, argv: list[str]) -> int:
    command = f"mfcpl {name}" + (f" {argv[0]}" if name == "client" and argv[:1] == ["run"] else "")
    _require(command, _pass_through_needs(name, argv))
    module_name, function = PASS_THROUGH[name]
    try:
        entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), function)
        return int(entry(argv) or 0)
    except ModuleNotFoundError as error:  # an optional dependency imported lazily (transformers, matplotlib)
        root = (error.name or "").partition(".")[0]
        if root not in EXTRA_OF_MODULE:
            raise
        return _missing_extra(command, EXTRA_OF_MODULE[root], root)


def _operator_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--server", default=os.environ.get("MFCPL_SERVER_URL", DEFAULT_SERVER),
                        help="coordinator URL (env MFCPL_SERVER_URL)")
    parent.add_argument(
        "--token", default=None, help="admin token (env MFCPL_ADMIN_TOKEN, else <state_dir>/admin_token)",
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
    serve.add_argument("--graceful-timeout", type=int, default=10, metavar="SECONDS",
                       help="on SIGTERM/SIGINT, wait this long for requests in flight, then cancel them (default 10)")
    serve.add_argument("--log-level", default="info")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="upgrade the schema to the latest migration (idempotent)")
    db_sub.add_parser("current", help="print the schema revision and the head revision")

    gc = sub.add_parser("gc", help="delete blobs and model versions the retention policy no longer keeps "
                        "(docs/operations.md); prints counts and bytes freed")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

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


def _dotenv_setting(name: str) -> str | None:
    """``name`` from the environment, else from ./.env (where the coordinator's settings also look)."""
    if os.environ.get(name):
        return os.environ[name]
    dotenv = Path(".env")
    if dotenv.is_file():
        for line in dotenv.read_text().splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and key.strip() == name and value.strip():
                return value.strip().strip("'\"")
    return None


def _admin_token_file() -> Path:
    """``<state_dir>/admin_token`` as the coordinator resolves it; without pydantic-settings (a client-only
    install) the same variables are read directly: MFCPL_STATE_DIR, else the deprecated MFCPL_DATA_DIR."""
    try:
        from coordinator.settings import Settings
    except ModuleNotFoundError:
        state_dir = _dotenv_setting("MFCPL_STATE_DIR") or _dotenv_setting("MFCPL_DATA_DIR") or "./mfcpl-data"
        return Path(state_dir) / "admin_token"
    return Settings().admin_token_file


def _admin_token(explicit: str | None) -> str:
    if explicit:
        return explicit
    token = _dotenv_setting("MFCPL_ADMIN_TOKEN")
    if token:
        return token
    path = _admin_token_file()
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(f"no admin token: pass --token, set MFCPL_ADMIN_TOKEN, or run where {path} is")


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {_admin_token(args.token)}", **kwargs.pop("headers", {})}
    try:
        with httpx.Client(base_url=args.server.rstrip("/") + "/v1", headers=headers, timeout=60) as http:
            response = http.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise SystemExit(f"cannot reach the coordinator at {args.server} ({method} {path}): {error!r}") from None
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
    _require("mfcpl serve", SERVER_MODULES)
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
        os.environ["MFCPL_AUTO_MIGRATE"] = "false"  # migrated once here; the workers need not each try again
    options: dict[str, Any] = {
        "host": args.host, "port": args.port, "workers": args.workers, "factory": True,
        "proxy_headers": args.proxy_headers, "timeout_keep_alive": args.timeout_keep_alive,
        "log_level": args.log_level, "timeout_graceful_shutdown": args.graceful_timeout,
        # httptools, plus a bound on the time request headers may take (MFCPL_HEADER_READ_TIMEOUT_S).
        "http": "coordinator.http_protocol:HeaderTimeoutHttpToolsProtocol",
    }
    if args.forwarded_allow_ips:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    uvicorn.run("coordinator.app:create_app", **options)
    return 0


def _db(args: argparse.Namespace) -> int:
    _require(f"mfcpl db {args.db_command}", DB_MODULES)
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


def _gc(args: argparse.Namespace) -> int:
    _require("mfcpl gc", SERVER_MODULES)
    from coordinator.core import Services
    from coordinator.retention import collect_garbage
    from coordinator.settings import Settings

    services = Services.build(Settings())
    try:
        report = collect_garbage(services, dry_run=args.dry_run)
    finally:
        services.db.dispose()
    _print(report.summary())
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
    if args.command == "gc":
        return _gc(args)
    if args.command == "federation":
        return _federation(args)
    raise AssertionError(args.command)
