"""``mfcpl reference``: what a centralised learner gets on an experiment's own split, the bar a federation is read
against.

The data is exactly what ``mfcpl simulate`` with the same options trains on (partition, dev cut, missing
modalities, normalization): the clients' training samples are pooled in one place. Two references:

* ``model``: the SDK's own network (the same FederationCreate, hence the same model and optimiser settings)
  trained on the pooled data for ``epochs`` epochs, evaluated on dev after each; test at the best dev epoch;
* ``linear``: a ridge classifier on the flattened features (one-hot targets, closed form, bias column), the
  ridge strength chosen on dev from a small grid; missing modalities are zero (as the model sees them).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import FederatedDataset
from client_sdk.evaluation import accuracy, macro_f1
from mfcpl.experiments.config import ExperimentConfig, federation_config
from mfcpl.wire.schemas import Algorithm, FederationCreate, ModalityKind

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def pooled(federation: FederatedDataset) -> MultimodalArrays:
    """Every client's samples in one set (client order, then sample order)."""
    parts = [c.data for c in federation.clients if len(c.data)]
    return MultimodalArrays(
        inputs={m: np.concatenate([p.inputs[m] for p in parts]) for m in parts[0].inputs},
        present={m: np.concatenate([p.present[m] for p in parts]) for m in parts[0].present},
        labels=np.concatenate([p.labels for p in parts]),
    )


def _design(data: MultimodalArrays, config: FederationCreate) -> np.ndarray:
    """Flattened non-text features plus a bias column, float64."""
    columns = [data.inputs[m.name].reshape(len(data), -1).astype(np.float64)
               for m in config.modalities if m.kind is not ModalityKind.TEXT]
    return np.concatenate([*columns, np.ones((len(data), 1))], axis=1)


def _scores(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    return {"accuracy": accuracy(labels, predicted), "macro_f1": macro_f1(labels, predicted, num_classes)}


def linear_reference(train: MultimodalArrays, dev: MultimodalArrays, test: MultimodalArrays,
                     config: FederationCreate) -> dict[str, Any]:
    """Ridge classifier on the flattened features; the ridge strength with the best dev macro-F1."""
    x, xd, xt = (_design(d, config) for d in (train, dev, test))
    targets = np.eye(config.num_classes)[train.labels]
    gram, cross = x.T @ x, x.T @ targets
    best: dict[str, Any] | None = None
    for ridge in RIDGE_GRID:
        weights = np.linalg.solve(gram + ridge * np.eye(len(gram)), cross)
        dev_scores = _scores((xd @ weights).argmax(1), dev.labels, config.num_classes)
        if best is None or dev_scores["macro_f1"] > best["dev"]["macro_f1"]:
            best = {"ridge": ridge, "dev": dev_scores,
                    "test": _scores((xt @ weights).argmax(1), test.labels, config.num_classes)}
    assert best is not None
    return best


def model_reference(train: MultimodalArrays, dev: MultimodalArrays, test: MultimodalArrays,
                    config: FederationCreate, epochs: int, seed: int,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The SDK model trained centrally (FedAvg's local training = plain cross-entropy), one epoch at a time."""
    import torch

    from client_sdk.model import build_model
    from client_sdk.trainer import evaluate, train_local

    torch.set_num_threads(1)
    central = config.model_copy(update={"algorithm": Algorithm.FEDAVG,
                                        "training": config.training.model_copy(update={"local_epochs": 1})})
    model = build_model(central, seed=seed)
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_local(model, train, central, seed=seed * 100_003 + epoch, threads=1)
        entry: dict[str, Any] = {"epoch": epoch, "dev": evaluate(model, dev, config.num_classes, threads=1),
                                 "test": evaluate(model, test, config.num_classes, threads=1)}
        history.append(entry)
        elapsed = time.perf_counter() - started
        progress(f"epoch {epoch:>3}/{epochs} | dev F1 {100 * entry['dev']['macro_f1']:5.1f} | test F1 "
                 f"{100 * entry['test']['macro_f1']:5.1f} | elapsed {elapsed:.0f}s | ETA "
                 f"{elapsed / epoch * (epochs - epoch):.0f}s")
    best = max(history, key=lambda e: e["dev"]["macro_f1"])
    return {"epochs": epochs, "best_epoch": best["epoch"], "dev": best["dev"], "test": best["test"],
            "history": history}


def run_reference(cfg: ExperimentConfig, epochs: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from mfcpl.experiments.runner import prepare_data

    federation, summary, normalization = prepare_data(cfg)
    train = pooled(federation)
    config = federation_config(cfg, federation, max(1, len(federation.clients)), normalization)
    dev = federation.dev if len(federation.dev) else federation.test
    progress(f"reference on {cfg.dataset}: {len(train)} pooled training samples from {len(federation.clients)} "
             f"clients, dev {len(federation.dev)}, test {len(federation.test)}, normalization {normalization.mode}")
    linear = linear_reference(train, dev, federation.test, config)
    progress(f"linear (ridge {linear['ridge']}): dev F1 {100 * linear['dev']['macro_f1']:.1f}, "
             f"test F1 {100 * linear['test']['macro_f1']:.1f}")
    model = model_reference(train, dev, federation.test, config, epochs, cfg.seed, progress)
    return {"config": cfg.model_dump(mode="json"), "missing": summary.to_dict(), "normalization": normalization.mode,
            "train_samples": len(train), "linear": linear, "model": model}


def reference_parser() -> argparse.ArgumentParser:
    from mfcpl.experiments.cli import _add_experiment_args

    p = argparse.ArgumentParser(
        prog="mfcpl reference",
        description="Centralised references on an experiment's own split: the SDK model trained on the pooled "
                    "training data, and a ridge classifier on the flattened features. Takes simulate's data options.")
    p.add_argument("--missing-rate", type=float, default=0.0, help="q (default 0: complete data)")
    p.add_argument("--missing-mode", default="client", choices=["client", "sample", "client_varied"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=30, help="epochs of the model reference (default 30)")
    p.add_argument("--out", default=None, help="write reference.json here")
    _add_experiment_args(p)
    return p


def reference_main(argv: Sequence[str] | None = None) -> int:
    from mfcpl.experiments.cli import config_from_args

    args = reference_parser().parse_args(argv)
    cfg = config_from_args(args, "fedavg", args.missing_rate, args.missing_mode, args.seed)
    result = run_reference(cfg, args.epochs)
    print(f"model: best dev epoch {result['model']['best_epoch']}, test macro-F1 "
          f"{100 * result['model']['test']['macro_f1']:.2f}; linear: test macro-F1 "
          f"{100 * result['linear']['test']['macro_f1']:.2f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "reference.json").write_text(json.dumps(result, indent=1))
        print(f"written {out / 'reference.json'}")
    return 0
