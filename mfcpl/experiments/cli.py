"""``mfcpl simulate`` (one federated experiment) and ``mfcpl sweep`` (a grid of them, resumable)."""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from mfcpl.experiments.config import QUICK_PRESET, ExperimentConfig
from mfcpl.wire.schemas import Algorithm

DEFAULT_RESULTS_DIR = Path("docs/results/runs")
EXIT_FEDERATION_STOPPED = 3  # cancelled, paused past the limit, or no round could open (message on stderr)


class ProgressPrinter:
    """The progress callback of ``simulate``: a line per call; on a terminal the ``status`` lines (a round's
    progress and ETA, waiting) redraw one line under the others, elsewhere (a pipe, a log) they are plain lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self.shown: str | None = None  # the status line on screen (terminal only)

    def _clear(self) -> None:
        if self.shown is not None:
            self.stream.write("\r\x1b[K")

    def __call__(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        if self.shown is not None:
            self.stream.write(self.shown)
        self.stream.flush()

    def status(self, line: str) -> None:
        if not self.tty:
            self(line)
            return
        self._clear()
        self.shown = line[:max(20, shutil.get_terminal_size().columns - 1)]
        self.stream.write(self.shown)
        self.stream.flush()

    def close(self) -> None:
        """End the status line (before the final table)."""
        if self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """``training.lambda_cmpr=0.1``, ``model.hidden_dim=64``, ``model.prototype_space="projection"``."""
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return data


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment (defaults: the FedMultimodal UCI-HAR protocol of docs/method.md)")
    g.add_argument("--dataset", default=None, metavar="NAME|PATH",
                   help="a registered data set (uci_har, the default; fsdd_av; meld; hateful_memes; plug-ins), or "
                        "the folder of your own data set (layout.json + feature files; docs/data.md)")
    g.add_argument("--data-dir", default=None, help="dataset directory (default $MFCPL_DATASETS_DIR or the user cache)")
    g.add_argument("--partition", default=None, choices=["given", "iid", "dirichlet", "group"],
                   help="how training data becomes clients (not uci_har): given (the files' own clients), iid, "
                        "dirichlet (label skew, --alpha), group (one client per group id). Default: given for data "
                        "that comes split into clients, group for a pooled train file with a group column, else iid")
    g.add_argument("--num-clients", type=int, default=None, help="clients made by --partition iid or dirichlet")
    g.add_argument("--alpha", type=float, default=None,
                   help="Dirichlet label skew: uci_har (default 0.1) or --partition dirichlet")
    g.add_argument("--dev-fraction", type=float, default=None,
                   help="share of the training data cut as the dev set when the data set has no dev file")
    g.add_argument("--normalization", default=None, choices=["auto", "federated", "client", "none"],
                   help="feature standardisation (default auto: none for uci_har, whose loader z-normalises "
                        "windows; federated statistics of the clients' training data otherwise)")
    g.add_argument("--max-clients", type=int, default=None, help="use only the first N clients")
    g.add_argument("--subjects", default=None, help="UCI-HAR training subjects, comma-separated (default all 21)")
    g.add_argument("--clients-per-round", type=int, default=None, help="default 10")
    g.add_argument("--rounds", type=int, default=None, help="default 200")
    g.add_argument("--local-epochs", type=int, default=None, help="default 1")
    g.add_argument("--lr", type=float, default=None, help="default 0.05")
    g.add_argument("--batch-size", type=int, default=None, help="default 16")
    g.add_argument("--eval-every", type=int, default=None, help="evaluate every N rounds (default 5)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. training.lambda_cmpr=0.1 or model.prototype_space=projection")
    g.add_argument("--tag", default=None, help="label that becomes part of the run id")
    g.add_argument("--quick", action="store_true",
                   help=f"a preset that learns within minutes on 2 cores: {json.dumps(QUICK_PRESET)}")


def config_from_args(args: argparse.Namespace, algorithm: str, missing_rate: float, missing_mode: str,
                     seed: int) -> ExperimentConfig:
    data: dict[str, Any] = json.loads(json.dumps(QUICK_PRESET)) if args.quick else {}
    if args.quick and (args.dataset or "uci_har") != "uci_har":
        data.pop("shards_per_subject")  # the preset's one client per subject is UCI-HAR's
    data.update({"algorithm": algorithm, "missing_rate": missing_rate, "missing_mode": missing_mode, "seed": seed})
    for key in ("dataset", "data_dir", "alpha", "max_clients", "clients_per_round", "rounds", "eval_every", "tag",
                "partition", "num_clients", "dev_fraction", "normalization"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.subjects:
        data["subjects"] = [int(s) for s in args.subjects.split(",")]
    training = data.setdefault("training", {})
    for key in ("local_epochs", "lr", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            training[key] = value
    apply_overrides(data, args.set)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"invalid settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _print_result(result: Any) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    rows = [
        ("run", result.run_id),
        ("transport", result.transport),
        ("clients that can train", str(result.trainable_clients)),
        ("best dev round", str(result.best_dev_round)),
        ("best dev macro-F1", pct(result.best_dev_macro_f1)),
        ("test macro-F1 at best dev", pct(result.test_at_best_dev.get("macro_f1"))),
        ("test accuracy at best dev", pct(result.test_at_best_dev.get("accuracy"))),
        ("smoothed test macro-F1 (last 10 evals)", pct(result.smoothed_test_macro_f1)),
        ("final test macro-F1", pct(result.final_test.get("macro_f1"))),
        ("wall time", f"{result.wall_time_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


EPILOG = ("progress: set-up steps, then a line per round with its time and an ETA (median round time x rounds "
          "left), evaluations, and why it waits (paused, not enough clients); one updating line on a terminal. "
          "Exit status: 0 ok, 2 usage error or missing extra, 3 the federation stopped (cancelled, paused too "
          "long, no round opened).")


def simulate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfcpl simulate", epilog=EPILOG,
                                description="Run one simulated federation through a real coordinator over HTTP.")
    p.add_argument("--algorithm", default="mfcpl", choices=[a.value for a in Algorithm],
                   help="the method (default mfcpl)")
    p.add_argument("--missing-rate", type=float, default=0.0, help="q, the missing-modality rate")
    p.add_argument("--missing-mode", default="client", choices=["client", "sample", "client_varied"],
                   help="whole clients miss a modality, or single samples, or whole clients at rates that differ "
                   "per client (client_varied: q_i ~ Beta(2q, 2(1-q)), mean q) (default client)")
    p.add_argument("--seed", type=int, default=1, help="seed of the partition, missing modalities and sampling")
    _add_experiment_args(p)
    p.add_argument("--config-json", help="a whole ExperimentConfig as JSON (overrides the options above)")
    p.add_argument("--out", default=None, help="output directory (default runs/<run id>)")
    p.add_argument("--server", default=None, help="use this coordinator instead of an embedded one")
    p.add_argument("--admin-token", default=os.environ.get("MFCPL_ADMIN_TOKEN"), help="with --server")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="client worker processes")
    p.add_argument("--device", default="cpu", help="torch device for training and evaluation (cpu, cuda)")
    p.add_argument("--in-process", action="store_true", help="no coordinator, no HTTP (the cost baseline)")
    p.add_argument("--compare", action="store_true", help="run in-process and over HTTP; print the wall-time ratio")
    p.add_argument("--results-dir", default=None, help="also copy result.json here as <run id>.json")
    return p


def simulate_main(argv: Sequence[str] | None = None) -> int:
    args = simulate_parser().parse_args(argv)
    progress = ProgressPrinter()
    try:
        return _simulate(args, progress)
    finally:
        progress.close()


def _simulate(args: argparse.Namespace, progress: ProgressPrinter) -> int:
    if args.config_json:
        cfg = ExperimentConfig.model_validate_json(args.config_json)
    else:
        cfg = config_from_args(args, args.algorithm, args.missing_rate, args.missing_mode, args.seed)
    out = Path(args.out or Path("runs") / cfg.run_id())
    from mfcpl.experiments.runner import DatasetError, FederationStopped, run_experiment, run_experiment_inprocess

    results = []
    try:
        if args.in_process or args.compare:
            results.append(run_experiment_inprocess(cfg, out / "inprocess" if args.compare else out,
                                                    workers=args.workers, device=args.device, progress=progress))
        if not args.in_process:
            results.append(run_experiment(cfg, out / "http" if args.compare else out, server_url=args.server,
                                          admin_token=args.admin_token, workers=args.workers, device=args.device,
                                          progress=progress))
    except FederationStopped as exc:
        progress.close()
        print(f"mfcpl simulate: stopped: {exc.reason}", file=sys.stderr)
        return EXIT_FEDERATION_STOPPED
    except DatasetError as exc:
        progress.close()
        print(f"mfcpl simulate: {exc}", file=sys.stderr)
        return 2
    progress.close()
    for result in results:
        print(f"\nresult ({result.transport}):")
        _print_result(result)
    if args.compare:
        inproc, http = results
        same = inproc.test_at_best_dev == http.test_at_best_dev
        print(f"\nwall time over HTTP / in-process: {http.wall_time_s / inproc.wall_time_s:.3f} "
              f"({http.wall_time_s:.1f}s / {inproc.wall_time_s:.1f}s); identical scores: {same}")
    if args.results_dir:
        final = results[-1]
        _copy_result((out / "http" if args.compare else out) / "result.json",
                     Path(args.results_dir) / f"{final.run_id}.json")
    print(f"\noutputs in {out}/ (result.json, history.csv, history.json, f1_per_round.png, final_model.safetensors)")
    return 0


def _copy_result(src: Path, dest: Path) -> None:
    """A run's result.json into a results folder, compact (``results.compact_result_text``: floats to 6
    significant digits, no absolute data_dir); copied as it is, with a warning, should compacting fail."""
    from mfcpl.experiments.results import write_compact_result

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_compact_result(json.loads(src.read_text()), dest)
    except Exception as exc:  # whatever went wrong, the result must reach the results folder
        print(f"warning: {dest.name} copied uncompacted ({type(exc).__name__}: {exc})", file=sys.stderr)
        shutil.copyfile(src, dest)


def _split(text: str, cast: type) -> list[Any]:
    return [cast(x) for x in text.split(",") if x.strip()]


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mfcpl sweep",
        epilog="progress: a line when a run starts and finishes ([done/total], ETA: median run time x runs left / "
               "parallel), and every 30 s (one updating line on a terminal) each running run's latest progress line "
               "from its run.log.",
        description="Run methods x missing rates x modes x seeds (resumes: finished runs are skipped), then write a "
                    "markdown table of mean and std over seeds.")
    p.add_argument("--methods", default="fedavg,fedprox,fedopt,fedproto,mfcpl", help="comma-separated algorithms")
    p.add_argument("--rates", default="0.8", help="comma-separated missing rates q (default 0.8)")
    p.add_argument("--modes", default="client", help="comma-separated missing modes: client, sample, client_varied")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    _add_experiment_args(p)
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="one JSON per finished run")
    p.add_argument("--runs-dir", default="runs/sweep", help="full outputs of each run")
    p.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time")
    p.add_argument("--table", default=None, help="write the markdown table here (default: print it)")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from --results-dir")
    p.add_argument("--curves", default=None, help="also plot mean dev macro-F1 per round per method to this PNG")
    p.add_argument("--all", action="store_true", help="tabulate every result in --results-dir, not only this grid")
    p.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="with --all: only the run ids matching this glob (repeatable), e.g. '*client_q080*_r200*'")
    p.add_argument("--curve-metric", default="dev_macro_f1",
                   help="what --curves plots per round: a history field such as dev_macro_f1, test_macro_f1 or "
                        "prototype_cosine_shared (the complete prototypes' mean pairwise cosine)")
    p.add_argument("--at-round", type=int, default=None, help="compare every run as if it had stopped at round N")
    p.add_argument("--reference", default=None, metavar="METHOD[:TAG]", type=_reference_arg,
                   help="add each row's paired gain over this method (and variant tag; none: its untagged runs) in "
                        "the same missing mode and rate: mean of the per-seed differences over the seeds both have "
                        "at the same rounds, with its 95%% Student-t interval, for test F1 @ best dev and smoothed "
                        "test F1, e.g. fedproto or mfcpl:pen-all")
    p.add_argument("--per-seed", action="store_true",
                   help="add a column of each run's test F1 @ best dev, in the order of the seeds column")
    p.add_argument("--collect-partial", action="store_true",
                   help="also record runs cut off before their end (their history.partial.json in --runs-dir)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and whether they are done (stale: done, but the settings it recorded differ "
                        "from what its configuration resolves to today; the differing keys follow)")
    p.add_argument("--device", default="cpu", help="torch device of each run (cpu, cuda)")
    p.add_argument("--in-process", action="store_true", help="run without the coordinator (see simulate --compare)")
    return p


def _reference_arg(text: str) -> str:
    from mfcpl.experiments.results import parse_reference

    method, _ = parse_reference(text)
    if method not in {a.value for a in Algorithm}:
        raise argparse.ArgumentTypeError(f"{method!r} is not a method ({', '.join(a.value for a in Algorithm)})")
    return text


def _short(value: Any, width: int = 40) -> str:
    from mfcpl.experiments.results import ABSENT

    text = "absent" if value is ABSENT else json.dumps(value, default=repr)
    return text if len(text) <= width else text[:width - 3] + "..."


def _describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``training.lr 0.05 -> 0.01, model.hidden_dim absent -> 128`` (recorded -> today)."""
    return ", ".join(f"{key} {_short(old)} -> {_short(new)}" for key, (old, new) in changes.items())


def _stale_runs(done: Sequence[ExperimentConfig], results_dir: Path) -> dict[str, dict[str, tuple[Any, Any]]]:
    """The done runs whose result files record settings other than their configuration resolves to today, with
    the differences; results without recorded settings (written before they were) are never stale."""
    from mfcpl.experiments.results import stale_settings

    stale = {}
    for cfg in done:
        changes = stale_settings(results_dir / f"{cfg.run_id()}.json", cfg)
        if changes:
            stale[cfg.run_id()] = changes
    return stale


def sweep_main(argv: Sequence[str] | None = None) -> int:
    args = sweep_parser().parse_args(argv)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    configs = [
        config_from_args(args, method, rate, mode, seed)
        for method, rate, mode, seed in itertools.product(
            _split(args.methods, str), _split(args.rates, float), _split(args.modes, str), _split(args.seeds, int))
    ]
    if args.collect_partial:
        _collect_partial(configs, results_dir, Path(args.runs_dir), "inprocess" if args.in_process else "http",
                         args.device)
    if not args.table_only:
        todo = [c for c in configs if not (results_dir / f"{c.run_id()}.json").exists()]
        stale = _stale_runs([c for c in configs if c not in todo], results_dir)
        print(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} already done, {len(todo)} to run, "
              f"{args.parallel} at a time")
        if args.dry_run:
            for c in configs:
                if c in todo:
                    print("todo  " + c.run_id())
                elif c.run_id() in stale:
                    print(f"stale {c.run_id()}  ({_describe_changes(stale[c.run_id()])})")
                else:
                    print("done  " + c.run_id())
            return 0
        for run_id, changes in stale.items():
            print(f"sweep: warning: {run_id} is done with other settings than it resolves to today "
                  f"({_describe_changes(changes)}); skipped (remove its file to run it again)", file=sys.stderr)
        extra = ["--device", args.device] + (["--in-process"] if args.in_process else [])
        _run_all(todo, results_dir, Path(args.runs_dir), args.parallel, extra)
    from mfcpl.experiments.results import load_results, parse_reference, results_table

    wanted = {c.run_id() for c in configs}
    results = [r for r in load_results(results_dir.glob("*.json")) if args.all or r.run_id in wanted]
    if args.match:
        results = [r for r in results if any(fnmatch.fnmatchcase(r.run_id, g) for g in args.match)]
    if args.at_round is not None:
        from mfcpl.experiments.results import truncated

        results = [truncated(r, args.at_round) for r in results]
    if args.reference:
        method, tag = parse_reference(args.reference)
        if not any(str(r.config.algorithm) == method and r.config.tag == tag for r in results):
            print(f"sweep: warning: no tabulated run is the reference {args.reference}", file=sys.stderr)
    table = results_table(results, reference=args.reference, per_seed=args.per_seed)
    if args.curves:
        _curves_plot(results, Path(args.curves), args.curve_metric)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
        _missing_rate_plot(results, Path(args.table).with_suffix(".png"))
        print(f"table written to {args.table}")
    print(table)
    return 0


def _collect_partial(configs: Sequence[ExperimentConfig], results_dir: Path, runs_dir: Path, transport: str,
                     device: str) -> None:
    """Turn the checkpointed histories of runs that were cut off into results marked ``partial``."""
    import re

    from mfcpl.experiments.results import summarize_history, write_compact_result

    for cfg in configs:
        dest = results_dir / f"{cfg.run_id()}.json"
        partial = runs_dir / cfg.run_id() / "history.partial.json"
        if dest.exists() or not partial.exists():
            continue
        history = json.loads(partial.read_text())
        log = runs_dir / cfg.run_id() / "run.log"
        found = re.search(r"(\d+) can train", log.read_text()) if log.exists() else None
        trainable = int(found.group(1)) if found else 0
        result = summarize_history(cfg, history, wall_time_s=float(history[-1].get("elapsed_seconds", 0.0)),
                                   transport=transport, missing={}, trainable_clients=trainable, device=device)
        result.partial = True
        write_compact_result(result.model_dump(mode="json"), dest)
        print(f"collected {cfg.run_id()}: {len(history)} of {cfg.rounds} rounds (partial)")


def _curves_plot(results: Sequence[Any], path: Path, metric: str = "dev_macro_f1") -> None:
    """Mean of ``metric`` over seeds per round where the runs recorded it, one line per method (and variant), with
    a band of ± one standard deviation over seeds where at least two seeds have the round."""
    from mfcpl.experiments.plots import plot_curves

    by_label: dict[str, dict[int, list[float]]] = {}
    runs: dict[str, int] = {}
    for r in results:
        label = f"{r.config.algorithm}{'-' + r.config.tag if r.config.tag else ''}"
        recorded = [e for e in r.history if metric in e]
        if recorded:
            runs[label] = runs.get(label, 0) + 1
        for e in recorded:
            by_label.setdefault(label, {}).setdefault(e["round"], []).append(e[metric])
    curves: dict[str, list[tuple[int, float]]] = {}
    bands: dict[str, list[float | None]] = {}
    for label, points in by_label.items():
        name = f"{label} (n={runs[label]})"
        curves[name] = [(rnd, statistics.fmean(v)) for rnd, v in sorted(points.items())]
        bands[name] = [statistics.stdev(v) if len(v) >= 2 else None for _, v in sorted(points.items())]
    spread = "band: ± 1 std over seeds"
    if metric.endswith("macro_f1"):
        plot_curves(curves, path, f"mean {metric.replace('_', ' ')} over seeds ({spread})",
                    ylabel=f"{metric.removesuffix('_macro_f1').replace('_', ' ')} macro-F1 (%)", bands=bands)
    else:
        plot_curves(curves, path, f"mean {metric} over seeds ({spread})", ylabel=metric, percent=False, bands=bands)


def _missing_rate_plot(results: Sequence[Any], path: Path) -> None:
    by_method: dict[str, dict[float, list[float]]] = {}
    for r in results:
        if "macro_f1" in r.test_at_best_dev:
            q = r.config.missing_rate
            by_method.setdefault(f"{r.config.algorithm}{'-' + r.config.tag if r.config.tag else ''}", {}) \
                .setdefault(q, []).append(r.test_at_best_dev["macro_f1"])
    if not any(len(v) > 1 for v in by_method.values()):
        return
    from mfcpl.experiments.plots import plot_missing_rate

    points = {m: [(q, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for q, v in qs.items()]
              for m, qs in by_method.items()}
    plot_missing_rate(points, path, "test macro-F1 at the best dev round, mean ± std over seeds")


def _run_all(todo: list[ExperimentConfig], results_dir: Path, runs_dir: Path, parallel: int,
             extra_args: Sequence[str] = ()) -> None:
    """Each run in its own process (own embedded coordinator, one client worker), ``parallel`` at a time."""
    running: list[tuple[ExperimentConfig, subprocess.Popen[bytes], float]] = []
    queue = list(todo)
    done = 0
    run_seconds: list[float] = []
    printer = ProgressPrinter()
    last_report = time.monotonic()
    while queue or running:
        while queue and len(running) < parallel:
            cfg = queue.pop(0)
            out = runs_dir / cfg.run_id()
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "run.log", "wb")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                [sys.executable, "-m", "mfcpl.experiments.cli", "simulate", "--config-json",
                 cfg.model_dump_json(), "--out", str(out), "--workers", "1", "--results-dir", str(results_dir),
                 *extra_args],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()
            running.append((cfg, proc, time.perf_counter()))
            printer(f"started  {cfg.run_id()}  (log: {out / 'run.log'})")
        time.sleep(1.0)
        if running and (printer.tty or time.monotonic() - last_report >= SWEEP_REPORT_EVERY_S):
            last_report = time.monotonic()
            printer.status(" || ".join(f"{c.run_id()}: {_last_progress_line(runs_dir / c.run_id() / 'run.log')}"
                                       for c, _, _ in running))
        for item in list(running):
            cfg, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            done += 1
            path = results_dir / f"{cfg.run_id()}.json"
            took = time.perf_counter() - t0
            run_seconds.append(took)
            left = len(todo) - done
            eta = statistics.median(run_seconds) * -(-left // max(1, parallel))
            eta_text = f"; ETA {_duration(eta)}" if left else ""
            if proc.returncode == 0 and path.exists():
                r = json.loads(path.read_text())
                f1 = r["test_at_best_dev"].get("macro_f1")
                printer(f"finished {cfg.run_id()} [{done}/{len(todo)}] test F1 @ best dev "
                        f"{'-' if f1 is None else f'{100 * f1:.1f}'} in {took:.0f}s{eta_text}")
            else:
                printer(f"FAILED   {cfg.run_id()} (exit {proc.returncode}); see "
                        f"{runs_dir / cfg.run_id() / 'run.log'}{eta_text}")
    printer.close()


SWEEP_REPORT_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _last_progress_line(log: Path) -> str:
    """The last line of a run's log (its latest progress), or ``starting``."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "starting"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("simulate", "sweep", "reference"):
        print("usage: python -m mfcpl.experiments.cli {simulate,sweep,reference} ...", file=sys.stderr)
        return 2
    if argv[0] == "reference":
        from mfcpl.experiments.reference import reference_main

        return reference_main(argv[1:])
    return simulate_main(argv[1:]) if argv[0] == "simulate" else sweep_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
