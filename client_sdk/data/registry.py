"""One entry point from a dataset name (or path) to a federated dataset or one client's shard.

Used by the experiment runner (``load_federation``) and the node runner (``load_client_data`` with a data
source setting). A data source is a string:

* ``<dataset>:<shard>`` - a client of a registered dataset, e.g. ``uci_har:s05_k2``, ``fsdd_av:theo``;
* ``<dataset>:<shard>?k=v&k=v`` - with loader options, e.g. ``uci_har:s05_k2?alpha=5.0&seed=3``,
  ``uci_har:s05_k2?missing_rule=client&missing_q=0.8&missing_seed=8``;
* a path: a feature file (``.safetensors`` / ``.npz``; its layout from ``layout.json`` in the file's folder or
  the folder above, or the ``layout`` option), or a feature dataset folder with ``#<shard>``.

Options common to every dataset: ``missing_rule`` (none, client, sample), ``missing_q`` and ``missing_seed``
(default: the partition's ``seed``, else 0) apply :func:`client_sdk.data.missing.simulate_missing`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from client_sdk.data.features import (
    FILE_SUFFIXES,
    LAYOUT_FILE,
    PRESETS,
    FeatureLayout,
    load_feature_federation,
    load_feature_file,
)
from client_sdk.data.federated import ClientShard, FederatedDataset, default_data_dir
from client_sdk.data.fsdd import fsdd_av_federation
from client_sdk.data.missing import MissingRule, drop_modalities, simulate_missing
from client_sdk.data.uci_har import uci_har_federation

Loader = Callable[..., FederatedDataset]


def _uci_har(data_dir: Path, **options: object) -> FederatedDataset:
    return uci_har_federation(data_dir=data_dir, **options)  # type: ignore[arg-type]


def _fsdd_av(data_dir: Path, **options: object) -> FederatedDataset:
    return fsdd_av_federation(data_dir=data_dir, **options)  # type: ignore[arg-type]


def _features(preset: str) -> Loader:
    def load(data_dir: Path, **options: object) -> FederatedDataset:
        return load_feature_federation(data_dir / preset, PRESETS[preset], **options)  # type: ignore[arg-type]

    return load


DATASETS: dict[str, Loader] = {
    "uci_har": _uci_har,
    "fsdd_av": _fsdd_av,
    "hateful_memes": _features("hateful_memes"),
    "meld": _features("meld"),
}


def available_datasets() -> list[str]:
    return sorted(DATASETS)


def _split_missing(options: dict[str, object]) -> tuple[MissingRule, float, int | None, dict[str, object]]:
    rest = dict(options)
    rule = MissingRule(str(rest.pop("missing_rule", "none")))
    q = float(rest.pop("missing_q", 0.0))  # type: ignore[arg-type]
    seed = rest.pop("missing_seed", None)
    return rule, q, None if seed is None else int(seed), rest  # type: ignore[call-overload]


def load_federation(name: str, data_dir: str | os.PathLike[str] | None = None, **options: object) -> FederatedDataset:
    """The federated dataset ``name`` (see :func:`available_datasets`) from ``data_dir`` (default:
    ``$MFCPL_DATASETS_DIR``, else ``~/.cache/mfcpl/datasets``), with the loader's ``options`` and, optionally,
    missing modalities (``missing_rule``, ``missing_q``, ``missing_seed``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(available_datasets())})")
    rule, q, missing_seed, rest = _split_missing(options)
    try:
        federation = DATASETS[name](default_data_dir(data_dir), **rest)
    except TypeError as exc:  # an option the loader does not take
        raise ValueError(f"{name}: {exc}") from exc
    if rule is not MissingRule.NONE:
        seed = missing_seed if missing_seed is not None else int(rest.get("seed", 0))  # type: ignore[call-overload]
        federation, _ = simulate_missing(federation, rule, q, seed)
    return federation


# ---------------------------------------------------------------------------------------------- data sources


def _coerce(value: str) -> object:
    if "," in value:
        return [_coerce(v) for v in value.split(",") if v]
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@dataclass(frozen=True)
class DataSource:
    """Where a node's data comes from: a registered dataset and shard, or a path (see the module docstring)."""

    dataset: str | None = None
    shard: str | None = None
    path: str | None = None
    options: dict[str, object] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DataSource:
        text = text.strip()
        if not text:
            raise ValueError("empty data source")
        body, _, query = text.partition("?")
        options = {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=False)}
        name, sep, shard = body.partition(":")
        if sep and name in DATASETS:
            if not shard:
                raise ValueError(f"data source {text!r}: give a shard, e.g. {name}:<client name>")
            return cls(dataset=name, shard=shard, options=options)
        if re.fullmatch(r"[a-z][a-z0-9_]*", name) and sep and not Path(body).exists():
            raise ValueError(f"unknown dataset {name!r} in data source {text!r} (known: {available_datasets()})")
        path, _, shard = body.partition("#")
        return cls(path=path, shard=shard or None, options=options)

    def __str__(self) -> str:
        query = "&".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in self.options.items()
        )
        if self.dataset:
            head = f"{self.dataset}:{self.shard}"
        else:
            head = f"{self.path}#{self.shard}" if self.shard else str(self.path)
        return head + (f"?{query}" if query else "")


def _layout_for(file: Path, options: dict[str, object]) -> FeatureLayout:
    preset = options.pop("layout", None)
    if preset is not None:
        if str(preset) not in PRESETS:
            raise ValueError(f"unknown feature layout {preset!r} (presets: {sorted(PRESETS)})")
        return PRESETS[str(preset)]
    for folder in (file.parent, file.parent.parent):
        if (folder / LAYOUT_FILE).is_file():
            return FeatureLayout.from_json((folder / LAYOUT_FILE).read_text())
    raise ValueError(f"{file}: no {LAYOUT_FILE} next to it or above it; pass ?layout=<preset>")


def load_client_data(source: DataSource | str, data_dir: str | os.PathLike[str] | None = None) -> ClientShard:
    """The one client shard a data source names, with missing modalities applied if the source asks for it.

    For ``uci_har`` only the shard's subject is partitioned (the partition draws per subject, so the shard is
    the one of the full 105-client federation) and the missing-modality draw depends on the client's name
    only, so a node sees exactly what the same client sees in a simulated experiment.
    """
    src = DataSource.parse(source) if isinstance(source, str) else source
    rule, q, missing_seed, options = _split_missing(src.options)
    if src.dataset is not None:
        subject = re.fullmatch(r"s(\d+)_k\d+", src.shard or "")
        if src.dataset == "uci_har" and "subjects" not in options and subject:
            options["subjects"] = [int(subject.group(1))]
            options.setdefault("test_subjects", [])
        try:
            federation = DATASETS[src.dataset](default_data_dir(data_dir), **options)
        except TypeError as exc:
            raise ValueError(f"{src.dataset}: {exc}") from exc
        shard = federation.client(str(src.shard))
    else:
        path = Path(str(src.path)).expanduser()
        if path.is_dir():
            if not src.shard:
                raise ValueError(f"{path} is a dataset folder: name the client with {path}#<client>")
            layout = options.pop("layout", None)
            federation = load_feature_federation(path, str(layout) if layout else None, clients=[src.shard])
            shard = federation.client(src.shard)
        elif path.is_file() and path.suffix in FILE_SUFFIXES:
            data = load_feature_file(path, _layout_for(path, options))
            shard = ClientShard(name=src.shard or path.stem, data=data, indices=np.arange(len(data)), subject=None)
        else:
            raise FileNotFoundError(f"data source {src}: no feature file or folder at {path}")
    if rule is not MissingRule.NONE:
        seed = missing_seed if missing_seed is not None else int(options.get("seed", 0))  # type: ignore[call-overload]
        shard = drop_modalities(shard, rule, q, seed)
    return shard
