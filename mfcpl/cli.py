"""The ``mfcpl`` command: serve, migrate, operator commands over HTTP, and the SDK's tools (imported lazily,
so the coordinator commands never import torch).

Each command imports only what it needs: the operator commands need the base install (httpx), ``serve`` and
``db`` the ``server`` extra, ``client run``, ``simulate``, ``sweep``, ``model init``, ``evaluate`` and ``federation
create --init-model`` the ``client`` extra (torch). A missing extra ends the command with exit status 2 and a
message naming the extra, not a traceback. ``federation create --from-dataset``, ``model init`` and ``evaluate``
work on a user's data-set folder; what they do with it lives in :mod:`mfcpl.operator`.

Exit status: 0 done; 1 an error from the coordinator (or it cannot be reached, or no admin token); 2 a usage
error or a missing extra; 3 ``simulate`` only: the federation stopped (cancelled, paused too long, no round
opened); 130 ``watch`` ended with Ctrl-C. Output cut short by a closed pipe (``mfcpl federation list | head``)
ends quietly with status 0.

The CLI is argparse (the standard library) on purpose: the operator commands must run on the base install
(httpx, pydantic, numpy), and the tables here are plain text; see docs/operations.md, "Watching a federation".
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8080"
EXIT_ERROR = 1
EXIT_MISSING_EXTRA = 2
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Subcommands handed whole to other modules: name -> (module, function).
PASS_THROUGH = {
    "client": ("client_sdk.node", "main"),
    "simulate": ("mfcpl.experiments.cli", "simulate_main"),
    "sweep": ("mfcpl.experiments.cli", "sweep_main"),
    "reference": ("mfcpl.experiments.reference", "reference_main"),
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
    if name == "reference":
        return ("torch",)
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


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("mfcpl")
    except PackageNotFoundError:
        from mfcpl import __version__

        return __version__


EPILOG = ("exit status: 0 ok, 1 error from the coordinator (or unreachable, or no admin token), "
          "2 usage error or missing extra, 3 federation stopped (simulate), 130 watch interrupted (Ctrl-C)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcpl", description="mfcpl coordinator and tools", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"mfcpl {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the coordinator (uvicorn)", description="run the coordinator (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from allowed proxies")
    serve.add_argument("--forwarded-allow-ips", default=None, help="proxies trusted for X-Forwarded-* headers")
    serve.add_argument("--timeout-keep-alive", type=int, default=5, metavar="SECONDS",
                       help="close idle keep-alive connections after this long (default 5)")
    serve.add_argument("--graceful-timeout", type=int, default=10, metavar="SECONDS",
                       help="on SIGTERM/SIGINT, wait this long for requests in flight, then cancel them (default 10)")
    serve.add_argument("--log-level", default="info", help="debug, info (default), warning, error")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="upgrade the schema to the latest migration (idempotent)")
    db_sub.add_parser("current", help="print the schema revision and the head revision")

    gc = sub.add_parser("gc", help="delete blobs and model versions the retention policy no longer keeps "
                        "(docs/operations.md); prints counts and bytes freed")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

    operator = _operator_parent()
    federation = sub.add_parser("federation", help="operator: create, list, inspect, pause, resume, cancel",
                                description="operator commands on federations", epilog=EPILOG)
    fed_sub = federation.add_subparsers(dest="federation_command", required=True, metavar="ACTION")
    create = fed_sub.add_parser(
        "create", parents=[operator], help="create a federation from a JSON config or a data-set folder",
        description="create a federation from a JSON config (--file) or from a data-set folder with layout.json "
        "(--from-dataset: name, modalities, shapes and classes from the layout, feature statistics from its training "
        "data); prints the federation as JSON", epilog=EPILOG)
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="FederationCreate JSON ('-' for stdin)")
    source.add_argument("--from-dataset", type=Path, metavar="PATH",
                        help="a data-set folder with layout.json (docs/data.md)")
    derived = create.add_argument_group("with --from-dataset")
    derived.add_argument("--name", default=None, help="federation name (default: the layout's name)")
    derived.add_argument("--algorithm", default=None, choices=[a.value for a in _algorithms()],
                         help="default mfcpl")
    derived.add_argument("--rounds", type=int, default=None, help="default 200")
    derived.add_argument("--clients-per-round", type=int, default=None,
                         help="default min(10, the folder's training clients)")
    derived.add_argument("--seed", type=int, default=None,
                         help="federation seed, also the partition and dev-cut seed (default 0)")
    derived.add_argument("--normalization", default="federated", choices=("federated", "client", "none"),
                         help="federated (default): standardise with statistics of every training client combined, "
                         "stored in the federation; client: each node with its own data's; none")
    _partition_args(derived)
    derived.add_argument("--stats-from", nargs="+", default=[], metavar="FILE", dest="stats_files",
                         help="the sites' feature sums (mfcpl client stats --out FILE, one per site): federated "
                         "statistics without anyone holding the training data; the folder then needs only "
                         "layout.json")
    derived.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="any setting, e.g. training.lambda_cmpr=0.5 or model.hidden_dim=64 (repeatable)")
    derived.add_argument("--dry-run", action="store_true",
                         help="print the FederationCreate JSON and create nothing (no coordinator needed)")
    derived.add_argument("--init-model", action="store_true",
                         help="also build and upload model version 0, seeded with the federation seed (as mfcpl "
                         "model init; needs the client extra)")
    listing = fed_sub.add_parser("list", parents=[operator], help="list federations (a table; --json for scripts)",
                                 description="list federations: id, name, status, round, latest model")
    _json_flag(listing)
    status = fed_sub.add_parser("status", parents=[operator], help="one federation's state and why it waits",
                                description="one federation: status, the reason it waits, its round and model")
    status.add_argument("fid", metavar="FID", help="federation id")
    _json_flag(status)
    upload = fed_sub.add_parser("upload-model", parents=[operator], help="upload model version 0 (safetensors)",
                                description="upload model version 0 (safetensors); prints it as JSON")
    upload.add_argument("--federation", required=True, metavar="FID", help="federation id")
    upload.add_argument("--file", required=True, type=Path, help="the model's .safetensors file")
    for action in ("pause", "resume", "cancel"):
        fed_action = fed_sub.add_parser(action, parents=[operator], help=f"{action} a federation",
                                        description=f"{action} a federation; prints it as JSON")
        fed_action.add_argument("--federation", required=True, metavar="FID", help="federation id")

    rounds = sub.add_parser("rounds", parents=[operator], help="operator: a federation's rounds (a table)",
                            description="a federation's rounds: state, updates received, model, times, failures",
                            epilog=EPILOG)
    rounds.add_argument("fid", metavar="FID", help="federation id")
    _json_flag(rounds)
    metrics = sub.add_parser("metrics", parents=[operator], help="operator: per-round metrics (a table)",
                             description="per-round metrics: the clients' averaged training metrics and the "
                             "evaluations recorded for each round's model", epilog=EPILOG)
    metrics.add_argument("fid", metavar="FID", help="federation id")
    metrics.add_argument("--last", type=int, default=None, metavar="N", help="only the last N rounds")
    _json_flag(metrics)
    watch = sub.add_parser("watch", parents=[operator], help="operator: follow a federation live until it ends",
                           description="follow a federation's events live: rounds opening and closing, updates "
                           "arriving, metrics, why it waits; ends when the federation completes or is cancelled "
                           "(exit 0), or on Ctrl-C (exit 130)", epilog=EPILOG)
    watch.add_argument("fid", metavar="FID", help="federation id")
    watch.add_argument("--json", action="store_true", help="print each event as one JSON line (for scripts)")
    watch.add_argument("--quiet-updates", action="store_true", help="do not print a line per update received")

    model = sub.add_parser("model", help="operator: model version 0", description="a federation's models",
                           epilog=EPILOG)
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    init = model_sub.add_parser(
        "init", parents=[operator], help="build the federation's model and upload it as version 0 (client extra)",
        description="build the model the federation's config declares (client_sdk.model.build_model, seeded) and "
        "upload it as model version 0; prints the model version as JSON", epilog=EPILOG)
    init.add_argument("fid", metavar="FID", help="federation id")
    init.add_argument("--seed", type=int, default=None, help="seed of the initial weights (default: the federation's)")

    evaluate = sub.add_parser(
        "evaluate", parents=[operator], help="operator: score global model versions on a dev/test set (client extra)",
        description="score global model versions on a data set's dev or test split, with the federation's feature "
        "normalisation, and record the scores with the round that produced each version (they show in mfcpl "
        "metrics); version 0 belongs to no round: it is scored and shown, never recorded", epilog=EPILOG)
    evaluate.add_argument("fid", metavar="FID", help="federation id")
    evaluate.add_argument("--data", required=True, type=Path, metavar="PATH",
                          help="a data-set folder with layout.json, or one .safetensors/.npz feature file (its layout "
                          "from layout.json next to it or one folder up)")
    evaluate.add_argument("--split", default="test", choices=("test", "dev"),
                          help="the folder's test (default) or dev set; also the name the scores are recorded under")
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, metavar="N", help="only model version N")
    which.add_argument("--all", action="store_true", help="every model version, 0 included")
    which.add_argument("--follow", action="store_true",
                       help="every version so far, then each new one as rounds close, until the federation completes "
                       "or is cancelled (progress on stderr)")
    cut = evaluate.add_argument_group(
        "--split dev on a folder without a dev file: the dev cut (as federation create made it)")
    cut.add_argument("--dev-fraction", type=float, default=None,
                     help="the --dev-fraction federation create had (default: the loader's, 0.2)")
    cut.add_argument("--seed", type=int, default=None, help="the dev-cut seed (default: the federation's seed, "
                     "which federation create --from-dataset cut with)")
    evaluate.add_argument("--no-record", action="store_true", help="only print the scores, record nothing")
    evaluate.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    evaluate.add_argument("--poll", type=float, default=30.0, metavar="SECONDS",
                          help="with --follow: longest wait for news before checking again (default 30)")
    evaluate.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                          help="with --follow: give up (exit 1) after this long (default: until the federation ends)")
    _json_flag(evaluate)

    viewer = sub.add_parser("viewer-token", help="operator: read-only tokens for dashboards",
                            description="read-only viewer tokens (a dashboard, not the admin token)", epilog=EPILOG)
    viewer_sub = viewer.add_subparsers(dest="viewer_command", required=True, metavar="ACTION")
    minted = viewer_sub.add_parser("create", parents=[operator], help="mint a viewer token (the token is shown once)",
                                   description="mint a viewer token; prints its id and the token (shown once)")
    minted.add_argument("--label", required=True, help="what the token is for, e.g. 'lab dashboard'")
    _json_flag(minted)
    _json_flag(viewer_sub.add_parser("list", parents=[operator], help="list viewer tokens (never the tokens)",
                                     description="every viewer token, revoked ones included, oldest first"))
    revoke = viewer_sub.add_parser("revoke", parents=[operator], help="revoke a viewer token (stops working at once)",
                                   description="revoke a viewer token; it stops working at once")
    revoke.add_argument("token_id", metavar="ID", help="the viewer token's id (vwt_...)")
    _json_flag(revoke)

    sub.add_parser("client", help="operator: enroll clients; run: an edge node (mfcpl client --help)",
                   add_help=False).add_argument("rest", nargs=argparse.REMAINDER, help="enroll ... | run ...")
    for name, what in (("simulate", "one simulated federation (experiments)"),
                       ("sweep", "a resumable grid of simulations (experiments)"),
                       ("reference", "centralised references on a simulation's own split (experiments)")):
        tool = sub.add_parser(name, help=f"{what}; mfcpl {name} --help", add_help=False)
        tool.add_argument("rest", nargs=argparse.REMAINDER, help=f"the options of mfcpl {name}")
    return parser


def _algorithms() -> list[Any]:
    from mfcpl.wire.schemas import Algorithm

    return list(Algorithm)


def _partition_args(group: argparse._ArgumentGroup) -> None:
    """How a pooled training file becomes clients, and the dev cut (client_sdk.data.load_federation's options)."""
    group.add_argument("--partition", default=None, choices=("iid", "dirichlet", "group", "given"),
                       help="pooled training data: how it is split into clients (default: the loader's)")
    group.add_argument("--num-clients", type=int, default=None, help="pooled training data: number of clients")
    group.add_argument("--alpha", type=float, default=None, help="dirichlet partition: label skew")
    group.add_argument("--dev-fraction", type=float, default=None,
                       help="no dev file: the share of training samples cut off as the dev set")


def client_parser() -> argparse.ArgumentParser:
    """``mfcpl client``: only for its help (``enroll`` is parsed by :func:`_enroll_parser`, ``run`` by the node)."""
    parser = argparse.ArgumentParser(prog="mfcpl client", description="clients of a federation", epilog=EPILOG)
    sub = parser.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    sub.add_parser("enroll", help="operator: enrol a client; prints its id and token (shown once)")
    sub.add_parser("run", help="run an edge node that trains for a federation (needs the client extra)")
    sub.add_parser("stats", help="a site's feature sums for federated normalization (federation create "
                   "--stats-from); no sample leaves the site")
    return parser


def _enroll_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcpl client enroll", parents=[_operator_parent()],
                                     description="enrol a client; prints its id and token (shown once) as JSON",
                                     epilog=EPILOG)
    parser.add_argument("--federation", required=True, metavar="FID", help="federation id")
    parser.add_argument("--name", required=True, help="the client's name, unique in the federation")
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


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``-`` for None."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _time(value: str | None) -> str | None:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC, as the API gives it)."""
    return None if value is None else value.replace("T", " ")[:19]


def _seconds_between(start: str | None, end: str | None) -> str | None:
    from datetime import datetime

    if not start or not end:
        return None
    return f"{(datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds():.1f}s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _federation_rows(feds: Sequence[dict[str, Any]]) -> str:
    rows = [(f["id"], f["config"]["name"], f["status"], f"{f.get('current_round') or 0}/{f['config']['rounds']}",
             f.get("latest_model_version"), _time(f.get("updated_at"))) for f in feds]
    return _table(("ID", "NAME", "STATUS", "ROUND", "MODEL", "UPDATED (UTC)"), rows)


def _federation_detail(fed: dict[str, Any]) -> str:
    config = fed["config"]
    pairs = [
        ("id", fed["id"]),
        ("name", config["name"]),
        ("algorithm", config.get("algorithm")),
        ("status", fed["status"]),
        ("reason", fed.get("status_reason")),
        ("round", f"{fed.get('current_round') or 0} of {config['rounds']}"),
        ("clients per round", config.get("clients_per_round")),
        ("latest model", fed.get("latest_model_version")),
        ("created (UTC)", _time(fed.get("created_at"))),
        ("updated (UTC)", _time(fed.get("updated_at"))),
    ]
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k:<{width}}  {'-' if v is None else v}" for k, v in pairs)


def _rounds_table(rounds: Sequence[dict[str, Any]]) -> str:
    rows = [(r["number"], r["state"], f"{r['received']}/{len(r['participants'])}", r["quorum"],
             r.get("input_model_version"), r.get("output_model_version"), _time(r.get("opened_at")),
             _seconds_between(r.get("opened_at"), r.get("closed_at")), r.get("failure_reason"))
            for r in rounds]
    return _table(("ROUND", "STATE", "RECEIVED", "QUORUM", "MODEL IN", "MODEL OUT", "OPENED (UTC)", "TOOK",
                   "FAILURE"), rows)


def _metrics_table(history: Sequence[dict[str, Any]]) -> str:
    train_keys = sorted({k for m in history for k in m.get("train", {})})
    eval_keys = sorted({(split, k) for m in history for split, values in m.get("evaluations", {}).items()
                        for k in values})
    headers = ["ROUND", "STATE", "RECEIVED"] + [k if k.startswith("train") else f"train_{k}" for k in train_keys]
    headers += [f"{split}_{k}" for split, k in eval_keys] + ["AGG S"]
    rows = []
    for m in history:
        row: list[Any] = [m["round"], m["state"], f"{m['received']}/{m['participants']}"]
        row += [_number(m["train"][k]) if k in m.get("train", {}) else None for k in train_keys]
        row += [_number(m["evaluations"].get(split, {}).get(k)) if k in m["evaluations"].get(split, {}) else None
                for split, k in eval_keys]
        row.append(None if m.get("aggregation_s") is None else f"{m['aggregation_s']:.2f}")
        rows.append(row)
    return _table(headers, rows)


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
    from coordinator.observability import worker_metrics_dir

    # Several workers: one Prometheus view of all of them (PROMETHEUS_MULTIPROC_DIR, docs/operations.md).
    with worker_metrics_dir(args.workers):
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


def _usage_error(command: str, message: object) -> int:
    print(f"{command}: {message}", file=sys.stderr)
    return EXIT_USAGE


# `federation create` options that only mean something with --from-dataset (dest -> flag).
FROM_DATASET_ONLY = {
    "name": "--name", "algorithm": "--algorithm", "rounds": "--rounds", "clients_per_round": "--clients-per-round",
    "seed": "--seed", "partition": "--partition", "num_clients": "--num-clients", "alpha": "--alpha",
    "dev_fraction": "--dev-fraction", "overrides": "--set", "dry_run": "--dry-run", "init_model": "--init-model",
}


def _partition_options(args: argparse.Namespace) -> Any:
    from mfcpl.operator import PartitionOptions

    return PartitionOptions(partition=getattr(args, "partition", None), num_clients=getattr(args, "num_clients", None),
                            alpha=getattr(args, "alpha", None), dev_fraction=args.dev_fraction, seed=args.seed)


def _create_from_dataset(args: argparse.Namespace) -> int:
    """``federation create --from-dataset PATH``: the config from the folder, then create (and model v0)."""
    command = "mfcpl federation create"
    if args.init_model and not args.dry_run:
        _require(f"{command} --init-model", ("torch",))  # before anything is created
    from mfcpl.operator import DatasetError, federation_from_dataset, initial_weights

    started = time.perf_counter()
    try:
        config, data = federation_from_dataset(
            args.from_dataset, name=args.name, algorithm=args.algorithm, rounds=args.rounds,
            clients_per_round=args.clients_per_round, seed=args.seed, normalization=args.normalization,
            options=_partition_options(args), overrides=args.overrides, stats_files=args.stats_files)
    except DatasetError as error:
        return _usage_error(command, error)
    if data is not None:
        names = ", ".join(c.name for c in data.clients[:20]) + (", ..." if len(data.clients) > 20 else "")
        print(f"clients (enrol these names; a node reads its own with --client NAME): {names}", file=sys.stderr)
    if args.dry_run:
        print(config.model_dump_json(indent=2))
        return 0
    if data is None:
        rows = {m: int(s.count) for m, s in (config.normalization.stats or {}).items()}
        print(f"{args.from_dataset}: layout.json, {len(config.modalities)} modalities, {config.num_classes} classes; "
              f"normalization federated from {len(args.stats_files)} sites' sums (feature rows {rows})",
              file=sys.stderr)
    else:
        samples = sum(len(c) for c in data.clients)
        stats = ("statistics of the training clients' " if config.normalization.mode == "federated" else "")
        print(f"{args.from_dataset}: {len(data.clients)} training clients ({samples} samples), "
              f"{len(config.modalities)} modalities, {config.num_classes} classes; normalization "
              f"{config.normalization.mode}" + (f" ({stats}{samples} samples)" if stats else "")
              + f"; read in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    fed = _request(args, "POST", "/federations", json=config.model_dump(mode="json"))
    if args.init_model:
        from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
        from mfcpl.wire.tensors import encode_model

        built = time.perf_counter()
        body = encode_model(initial_weights(config))
        version = _request(args, "POST", f"/federations/{fed['id']}/models", content=body,
                           headers={"Content-Type": SAFETENSORS_CONTENT_TYPE})
        print(f"model version {version['version']} uploaded ({len(body) / 1e6:.2f} MB, built and uploaded in "
              f"{time.perf_counter() - built:.1f}s)", file=sys.stderr)
        fed = _request(args, "GET", f"/federations/{fed['id']}")
    _print(fed)
    return 0


def _federation(args: argparse.Namespace) -> int:
    command = args.federation_command
    if command == "create" and args.from_dataset is not None:
        return _create_from_dataset(args)
    if command == "create":
        extra = [flag for dest, flag in FROM_DATASET_ONLY.items() if getattr(args, dest) not in (None, False, [])]
        if args.normalization != "federated":
            extra.append("--normalization")
        if extra:
            return _usage_error("mfcpl federation create", f"{', '.join(extra)} only with --from-dataset (a --file "
                                "config says everything itself)")
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        _print(_request(args, "POST", "/federations", json=json.loads(text)))
    elif command == "list":
        feds = _request(args, "GET", "/federations")
        if args.json:
            _print(feds)
        else:
            print(_federation_rows(feds) if feds else "no federations")
    elif command == "status":
        fed = _request(args, "GET", f"/federations/{args.fid}")
        _print(fed) if args.json else print(_federation_detail(fed))
    elif command == "upload-model":
        _print(_request(args, "POST", f"/federations/{args.federation}/models", content=args.file.read_bytes(),
                        headers={"Content-Type": "application/vnd.safetensors"}))
    else:
        _print(_request(args, "POST", f"/federations/{args.federation}/{command}"))
    return 0


def _rounds(args: argparse.Namespace) -> int:
    rounds = _request(args, "GET", f"/federations/{args.fid}/rounds")
    if args.json:
        _print(rounds)
    else:
        print(_rounds_table(rounds) if rounds else "no rounds yet")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    history = _request(args, "GET", f"/federations/{args.fid}/metrics")
    if args.last is not None:
        history = history[-args.last:] if args.last > 0 else []
    if args.json:
        _print(history)
    else:
        print(_metrics_table(history) if history else "no rounds yet")
    return 0


def _event_line(event: Any, quiet_updates: bool) -> str | None:
    """One human line for an :class:`~mfcpl.wire.schemas.Event` (None: nothing to print)."""
    data, rnd, kind = event.data, event.round, str(event.type)
    stamp = event.created_at.strftime("%H:%M:%S")
    if kind == "round.opened":
        text = (f"round {rnd} opened: {len(data.get('participants', []))} participants, quorum {data.get('quorum')},"
                f" model v{data.get('input_model_version')}, deadline {_time(data.get('deadline'))}")
    elif kind == "update.received":
        if quiet_updates:
            return None
        text = f"round {rnd}: update {data.get('received')}/{data.get('participants')} received"
    elif kind == "round.closed":
        train = data.get("train_metrics") or {}
        shown = ", ".join(f"{k} {_number(v)}" for k, v in sorted(train.items()))
        took = data.get("aggregation_s")
        text = (f"round {rnd} closed: {data.get('received')} updates -> model v{data.get('output_model_version')}"
                + (f" (aggregated in {took:.2f}s)" if isinstance(took, (int, float)) else "")
                + (f"; {shown}" if shown else ""))
    elif kind == "round.failed":
        text = f"round {rnd} failed: {data.get('reason')}"
    elif kind == "federation.waiting":
        text = f"waiting: {data.get('reason')}"
    elif kind == "federation.status":
        text = f"status: {data.get('status')}" + (f" ({data['reason']})" if data.get("reason") else "")
    else:
        text = f"{kind} {json.dumps(data)}"
    return f"{stamp}  {text}"


def _watch(args: argparse.Namespace) -> int:
    from client_sdk.client import MfcplClient
    from client_sdk.errors import MfcplError

    client = MfcplClient(args.server, _admin_token(args.token), timeout=30.0)
    stream = None
    try:
        fed = client.federations.get(args.fid)
        if not args.json:
            print(f"watching {fed.id} ({fed.config.name}): {fed.status}, round {fed.current_round or 0} of "
                  f"{fed.config.rounds}" + (f"; {fed.status_reason}" if fed.status_reason else ""), flush=True)
        stream = client.events.stream(args.fid)
        for event in stream:
            if args.json:
                print(event.model_dump_json(), flush=True)
            elif (line := _event_line(event, args.quiet_updates)) is not None:
                print(line, flush=True)
        fed = client.federations.get(args.fid)
        if not args.json:
            print(f"federation {fed.id} {fed.status} at round {fed.current_round or 0} of {fed.config.rounds}"
                  + (f", latest model v{fed.latest_model_version}" if fed.latest_model_version is not None else ""))
            history = client.metrics.history(args.fid)
            if history:
                print(_metrics_table([m.model_dump(mode="json") for m in history[-1:]]))
        return 0
    except KeyboardInterrupt:
        print("stopped watching (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MfcplError as error:
        print(f"mfcpl watch: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if stream is not None:
            stream.close()
        client.close()


def _viewer_token(args: argparse.Namespace) -> int:
    if args.viewer_command == "create":
        minted = _request(args, "POST", "/viewer-tokens", json={"label": args.label})
        if args.json:
            _print(minted)
        else:
            print(f"viewer token {minted['id']} ({minted['label']}); the token, shown only now:\n{minted['token']}")
        return 0
    if args.viewer_command == "list":
        tokens = _request(args, "GET", "/viewer-tokens")
    else:
        tokens = [_request(args, "DELETE", f"/viewer-tokens/{args.token_id}")]
    if args.json:
        _print(tokens if args.viewer_command == "list" else tokens[0])
    elif tokens:
        print(_table(("ID", "LABEL", "REVOKED", "CREATED (UTC)", "REVOKED AT (UTC)"),
                     [(t["id"], t["label"], "yes" if t.get("revoked") else "no", _time(t.get("created_at")),
                       _time(t.get("revoked_at"))) for t in tokens]))
    else:
        print("no viewer tokens")
    return 0


def _sdk_client(args: argparse.Namespace) -> Any:
    from client_sdk.client import MfcplClient

    return MfcplClient(args.server, _admin_token(args.token), timeout=60.0, max_retries=2)


def _model(args: argparse.Namespace) -> int:
    """``model init FID``: build the federation's model (seeded) and upload it as version 0."""
    command = f"mfcpl model {args.model_command}"
    _require(command, ("torch",))
    from client_sdk.errors import MfcplError
    from mfcpl.operator import initial_weights

    with _sdk_client(args) as client:
        try:
            config = client.federations.get(args.fid).config
            started = time.perf_counter()
            weights = initial_weights(config, args.seed)
            built = time.perf_counter() - started
            version = client.models.upload_initial(args.fid, weights)
        except MfcplError as error:
            print(f"{command}: {error}", file=sys.stderr)
            return EXIT_ERROR
    seed = config.seed if args.seed is None else args.seed
    print(f"built {config.algorithm} model ({sum(int(w.size) for w in weights.values())} parameters, seed {seed}) in "
          f"{built:.1f}s; uploaded as version {version.version} ({version.size_bytes / 1e6:.2f} MB) in "
          f"{time.perf_counter() - started - built:.1f}s", file=sys.stderr)
    _print(version.model_dump(mode="json"))
    return 0


EVAL_COLUMNS = ("accuracy", "macro_f1", "loss")


def _evaluation_row(row: dict[str, Any]) -> list[Any]:
    metrics = row["metrics"]
    recorded = "yes" if row["recorded"] else ("no (version 0: no round)" if row["round"] is None else "no")
    return [row["round"], row["version"], row["split"], row["samples"],
            *(f"{metrics[k]:.4f}" if k in metrics else None for k in EVAL_COLUMNS), recorded]


EVAL_HEADERS = ("ROUND", "VERSION", "SPLIT", "SAMPLES", "ACCURACY", "MACRO-F1", "LOSS", "RECORDED")


def _evaluate(args: argparse.Namespace) -> int:
    """``evaluate FID --data PATH``: score model versions on a dev/test set and record the scores."""
    command = "mfcpl evaluate"
    _require(command, ("torch",))
    from client_sdk.errors import MfcplError
    from mfcpl.operator import DatasetError, load_split, normalized, score_weights, scored_versions
    from mfcpl.wire.schemas import FINISHED_STATUSES, EvaluationCreate

    def progress(line: str) -> None:
        print(f"evaluate: {line}", file=sys.stderr, flush=True)

    with _sdk_client(args) as client:
        try:
            config = client.federations.get(args.fid).config
        except MfcplError as error:
            print(f"{command}: {error}", file=sys.stderr)
            return EXIT_ERROR
        try:
            arrays = normalized(load_split(args.data, args.split, config, _partition_options(args)), config)
        except DatasetError as error:
            return _usage_error(command, error)
        progress(f"{args.data} ({args.split}): {len(arrays)} samples; normalization {config.normalization.mode}")
        model: Any = None

        def score(version: Any) -> dict[str, Any]:
            nonlocal model
            weights = client.models.download(args.fid, version.version, expected_sha256=version.sha256).weights
            metrics, model = score_weights(config, weights, arrays, model, threads=args.threads)
            metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
            recorded = False
            if version.round is not None and not args.no_record:
                client.evaluations.create(args.fid, version.round, EvaluationCreate(
                    split=args.split, metrics=metrics, model_version=version.version))
                recorded = True
            return {"round": version.round, "version": version.version, "split": args.split, "samples": len(arrays),
                    "metrics": metrics, "recorded": recorded}

        try:
            if not args.follow:
                try:
                    versions = scored_versions(client.models.list(args.fid), version=args.version, every=args.all)
                except LookupError as error:
                    return _usage_error(command, error)
                if not versions:
                    print(f"{command}: federation {args.fid} has no model yet (mfcpl model init {args.fid} uploads "
                          "version 0)", file=sys.stderr)
                    return EXIT_ERROR
                rows = []
                for version in versions:
                    progress(f"scoring model version {version.version}")
                    rows.append(score(version))
                _print(rows) if args.json else print(_table(EVAL_HEADERS, [_evaluation_row(r) for r in rows]))
                return 0
            return _follow(args, client, score, progress, FINISHED_STATUSES)
        except MfcplError as error:
            print(f"{command}: {error}", file=sys.stderr)
            return EXIT_ERROR


def _follow(args: argparse.Namespace, client: Any, score: Callable[[Any], dict[str, Any]],
            progress: Callable[[str], None], finished: frozenset[Any]) -> int:
    """``evaluate --follow``: score every version, then each new one, until the federation completes or is
    cancelled. Waits on the event stream at most ``--poll`` seconds at a time; ``--timeout`` bounds the whole."""
    from mfcpl.wire.schemas import EventType

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    done: set[int] = set()
    widths = [max(len(h), 8) for h in EVAL_HEADERS]
    if not args.json:
        print("  ".join(h.ljust(w) for h, w in zip(EVAL_HEADERS, widths, strict=True)).rstrip(), flush=True)
    last_event_id: str | None = None
    shown = None
    while True:
        fed = client.federations.get(args.fid)  # the status first: every version it had is in the list below
        for version in sorted(client.models.list(args.fid), key=lambda v: v.version):
            if version.version in done:
                continue
            progress(f"scoring model version {version.version}")
            row = score(version)
            done.add(version.version)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                cells = ["-" if v is None else str(v) for v in _evaluation_row(row)]
                print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip(), flush=True)
        if fed.status in finished:
            progress(f"federation {fed.id} {fed.status} at round {fed.current_round or 0} of {fed.config.rounds}; "
                     f"{len(done)} versions scored")
            return 0
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            print(f"mfcpl evaluate: gave up after --timeout {args.timeout:g}s; federation {fed.id} is {fed.status} "
                  f"at round {fed.current_round or 0} of {fed.config.rounds}", file=sys.stderr)
            return EXIT_ERROR
        state = (fed.status, fed.current_round, fed.status_reason)
        if state != shown:
            progress(f"waiting for the next model: {fed.status}, round {fed.current_round or 0} of "
                     f"{fed.config.rounds}" + (f" ({fed.status_reason})" if fed.status_reason else ""))
            shown = state
        wait = args.poll if remaining is None else min(args.poll, remaining)
        stream = client.events.stream(args.fid, last_event_id=last_event_id, timeout=max(0.1, wait))
        try:
            for event in stream:
                new_model = (event.type == EventType.ROUND_CLOSED
                             and event.data.get("output_model_version") not in done)
                if new_model or event.type in (EventType.FEDERATION_STATUS, EventType.ROUND_FAILED):
                    break
        finally:
            last_event_id = stream.last_event_id
            stream.close()


def _client_help(argv: list[str]) -> bool:
    """``mfcpl client``, ``mfcpl client -h``: the help that lists enroll and run."""
    return not argv or argv[0] in ("-h", "--help")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mfcpl`` command; a closed stdout pipe (``| head``) ends it quietly."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would print the error again at exit while flushing: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] in ("simulate", "sweep", "reference"):
        return _pass_through(argv[0], argv[1:])
    if argv and argv[0] == "client" and _client_help(argv[1:]):
        client_parser().print_help()
        return 0 if argv[1:] else EXIT_MISSING_EXTRA
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
    if args.command == "rounds":
        return _rounds(args)
    if args.command == "metrics":
        return _metrics(args)
    if args.command == "watch":
        return _watch(args)
    if args.command == "viewer-token":
        return _viewer_token(args)
    if args.command == "model":
        return _model(args)
    if args.command == "evaluate":
        return _evaluate(args)
    raise AssertionError(args.command)
