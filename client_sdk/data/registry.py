"""One entry point from a data set name or folder path to a federated data set or one client's shard.

Used by the experiment runner (``load_federation``) and the node runner (``load_client_data`` with a data
source setting). A data set is a registered name (``uci_har``, ``fsdd_av``, ``hateful_memes``, ``meld``), the
name of a plugin (entry-point group ``mfcpl.datasets``, :mod:`client_sdk.data.plugins`), or a folder path with
a ``layout.json`` (:mod:`client_sdk.data.folder`). A data source is a string:

* ``<dataset>:<shard>`` - a client of a registered or plugin data set, e.g. ``uci_har:s05_k2``, ``fsdd_av:theo``;
* ``<dataset>:<shard>?k=v&k=v`` - with options, e.g. ``uci_har:s05_k2?alpha=5.0&seed=3``,
  ``fsdd_av:c3?partition=dirichlet&num_clients=12&alpha=0.3&seed=1&missing_rule=client&missing_q=0.8``;
* a folder with ``#<shard>``: ``path/to/ds#c3?partition=dirichlet&num_clients=10&alpha=0.5&seed=1``;
* a feature file (``.safetensors`` / ``.npz``; its layout from ``layout.json`` in the file's folder or the
  folder above, or the ``layout`` option): the whole file is the shard.

A shard is exactly the client of the same name in ``load_federation`` with the same options.
Options common to every data set: ``seed``; the partition options ``partition``, ``num_clients``, ``alpha``,
``min_size``, ``max_clients``, ``clients`` (:mod:`client_sdk.data.partition`; ``uci_har`` has its own);
``dev_fraction`` where the data set has no dev set of its own; ``missing_rule`` (none, client, sample),
``missing_q`` and ``missing_seed`` (default: ``seed``, else 0) apply
:func:`client_sdk.data.missing.simulate_missing`. An option given as None counts as not given.
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
    find_layout_file,
    load_feature_file,
)
from client_sdk.data.federated import ClientShard, FederatedDataset, default_data_dir
from client_sdk.data.folder import is_path_syntax, load_folder_federation
from client_sdk.data.fsdd import fsdd_av_federation
from client_sdk.data.missing import MissingRule, drop_modalities, simulate_missing
from client_sdk.data.partition import PartitionRequest, Scheme, repartition
from client_sdk.data.plugins import call_plugin, plugin_names
from client_sdk.data.uci_har import uci_har_federation

Loader = Callable[[Path, dict[str, object]], FederatedDataset]
"""A registered data set: ``loader(data_dir, options)`` (options without the missing-modality ones)."""

UCI_HAR_REFUSED = ("partition", "num_clients", "clients")


def _uci_har(data_dir: Path, options: dict[str, object]) -> FederatedDataset:
    """UCI-HAR with its native partition; ``min_size`` is its ``min_shard_size``."""
    refused = sorted(set(options) & set(UCI_HAR_REFUSED))
    if refused:
        raise ValueError(
            f"uci_har has its own partition (per-subject Dirichlet shards) and does not take {refused}: use alpha, "
            "shards_per_subject, min_size, dev_fraction, subjects, test_subjects, max_clients, seed"
        )
    native = dict(options)
    if "min_size" in native:
        if "min_shard_size" in native:
            raise ValueError("uci_har: give min_size or min_shard_size, not both")
        native["min_shard_size"] = native.pop("min_size")
    return _call(uci_har_federation, "uci_har", data_dir, native)


def _call(
    loader: Callable[..., FederatedDataset], name: str, data_dir: Path, options: dict[str, object]
) -> FederatedDataset:
    """``loader(data_dir=..., **options)``; an option it does not take is a ``ValueError`` naming the data set."""
    try:
        return loader(data_dir=data_dir, **options)
    except TypeError as exc:  # an option the loader does not take
        raise ValueError(f"{name}: {exc}") from exc


def _fsdd_av(data_dir: Path, options: dict[str, object]) -> FederatedDataset:
    """The six speakers, or any partition of their training clips; dev and test are its own."""
    request, native = PartitionRequest.from_options(options)
    if "dev_fraction" in native:
        raise ValueError("fsdd_av has its own dev set (train takes 5..9, see dev_takes); dev_fraction does not apply")
    request.refuse_unused(request.partition or Scheme.GIVEN)  # before the features are computed
    return repartition(_call(fsdd_av_federation, "fsdd_av", data_dir, native), request)


def _features(preset: str) -> Loader:
    """A registered feature data set in ``<data_dir>/<preset>``: its ``layout.json`` if it has one, else the preset."""

    def load(data_dir: Path, options: dict[str, object]) -> FederatedDataset:
        root = data_dir / preset
        layout = options.get("layout")
        if layout is None and not (root / LAYOUT_FILE).is_file():
            layout = preset
        return _folder(str(root), {**options, "layout": layout})

    return load


DATASETS: dict[str, Loader] = {
    "uci_har": _uci_har,
    "fsdd_av": _fsdd_av,
    "hateful_memes": _features("hateful_memes"),
    "meld": _features("meld"),
}


def available_datasets() -> list[str]:
    """Registered data sets and installed plugins (a plugin cannot replace a registered name)."""
    return sorted(set(DATASETS) | set(plugin_names()))


def _split_missing(options: dict[str, object]) -> tuple[MissingRule, float, int | None, dict[str, object]]:
    rest = {k: v for k, v in options.items() if v is not None}
    try:
        rule = MissingRule(str(rest.pop("missing_rule", "none")))
    except ValueError:
        raise ValueError(f"missing_rule must be one of {[r.value for r in MissingRule]}") from None
    q = float(rest.pop("missing_q", 0.0))  # type: ignore[arg-type]
    seed = rest.pop("missing_seed", None)
    return rule, q, None if seed is None else int(seed), rest  # type: ignore[call-overload]


def _plugin(name: str, data_dir: Path, options: dict[str, object]) -> FederatedDataset:
    """A plugin's clients, re-partitioned by the tool; ``seed`` reaches the loader only if it names it."""
    request, native = PartitionRequest.from_options(options)
    request.refuse_unused(request.partition or Scheme.GIVEN)
    seed = request.seed if "seed" in options else None
    return repartition(call_plugin(name, data_dir, native, seed), request)


def _folder(path: str, options: dict[str, object]) -> FederatedDataset:
    """A folder data set; ``layout`` (a preset name) stands in for a missing ``layout.json``."""
    rest = {k: v for k, v in options.items() if v is not None}
    layout = rest.pop("layout", None)
    dev_fraction = rest.pop("dev_fraction", None)
    if dev_fraction is not None and (isinstance(dev_fraction, bool) or not isinstance(dev_fraction, int | float)):
        raise ValueError(f"dev_fraction must be a number, got {dev_fraction!r}")
    return load_folder_federation(path, None if layout is None else str(layout), dev_fraction=dev_fraction, **rest)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown dataset {name!r} (known: {', '.join(available_datasets())}; or give a folder path with {LAYOUT_FILE})"
    )


def _load(name_or_path: str, data_dir: str | os.PathLike[str] | None, options: dict[str, object]) -> FederatedDataset:
    if is_path_syntax(name_or_path):
        return _folder(name_or_path, options)
    if name_or_path in DATASETS:
        return DATASETS[name_or_path](default_data_dir(data_dir), options)
    if name_or_path in plugin_names():
        return _plugin(name_or_path, default_data_dir(data_dir), options)
    if Path(name_or_path).is_dir():
        return _folder(name_or_path, options)
    raise _unknown(name_or_path)


def load_federation(
    name_or_path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, **options: object
) -> FederatedDataset:
    """The federated data set ``name_or_path``: a registered or plugin name (see :func:`available_datasets`),
    found under ``data_dir`` (default: ``$MFCPL_DATASETS_DIR``, else ``~/.cache/mfcpl/datasets``), or a folder
    path. ``options`` go to the loader and the partition (see the module docstring); ``missing_rule``,
    ``missing_q``, ``missing_seed`` then remove modalities from the clients."""
    rule, q, missing_seed, rest = _split_missing(options)
    if isinstance(name_or_path, str):
        federation = _load(name_or_path, data_dir, rest)
    else:  # a Path is always a folder
        federation = _folder(os.fspath(name_or_path), rest)
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
        if sep and "/" not in name and name in available_datasets():
            if not shard:
                raise ValueError(f"data source {text!r}: give a shard, e.g. {name}:<client name>")
            return cls(dataset=name, shard=shard, options=options)
        if re.fullmatch(r"[a-z][a-z0-9_]*", name) and sep and not Path(body).exists():
            raise ValueError(
                f"unknown dataset {name!r} in data source {text!r} (known: {', '.join(available_datasets())})"
            )
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
    found = find_layout_file(file)
    if found is not None:
        return FeatureLayout.from_json(found.read_text())
    raise ValueError(f"{file}: no {LAYOUT_FILE} next to it or above it; pass ?layout=<preset>")


def _uci_har_subject(shard: str, options: dict[str, object]) -> dict[str, object]:
    """For ``uci_har:sNN_kK``: partition subject NN only (its shards are those of the full partition)."""
    subject = re.fullmatch(r"s(\d+)_k\d+", shard)
    if subject and "subjects" not in options:
        return {**options, "subjects": [int(subject.group(1))], "test_subjects": options.get("test_subjects", [])}
    return options


def _file_shard(path: Path, shard: str | None, options: dict[str, object]) -> ClientShard:
    """A whole feature file as one shard (missing modalities applied as the options ask)."""
    rule, q, missing_seed, rest = _split_missing(options)
    data = load_feature_file(path, _layout_for(path, rest))
    seed = missing_seed if missing_seed is not None else int(rest.pop("seed", 0))  # type: ignore[call-overload]
    if rest:
        raise ValueError(f"{path}: a feature file takes layout, seed and missing_* options only, not {sorted(rest)}")
    one = ClientShard(name=shard or path.stem, data=data, indices=np.arange(len(data)), subject=None)
    return one if rule is MissingRule.NONE else drop_modalities(one, rule, q, seed)


def load_client_data(source: DataSource | str, data_dir: str | os.PathLike[str] | None = None) -> ClientShard:
    """The one client shard a data source names, with missing modalities applied if the source asks for it.

    It is the client of the same name in ``load_federation`` with the same options: only that client is
    selected (``clients=[shard]``; for ``uci_har`` only its subject is partitioned, whose draws do not depend
    on the other subjects), and the missing-modality draw depends on the client's name only.
    """
    src = DataSource.parse(source) if isinstance(source, str) else source
    if src.dataset is None:
        path = Path(str(src.path)).expanduser()
        if path.is_file() and path.suffix in FILE_SUFFIXES:
            return _file_shard(path, src.shard, dict(src.options))
        if not path.is_dir():
            raise FileNotFoundError(f"data source {src}: no feature file or folder at {path}")
        if not src.shard:
            raise ValueError(f"{path} is a data set folder: name the client with {path}#<client>")
    shard = str(src.shard)
    options = dict(src.options)
    if src.dataset == "uci_har":
        return load_federation("uci_har", data_dir, **_uci_har_subject(shard, options)).client(shard)
    target = src.dataset if src.dataset is not None else str(src.path)
    options.setdefault("clients", [shard])
    return load_federation(target, data_dir, **options).client(shard)
