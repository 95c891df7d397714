"""What the operator commands of ``mfcpl`` do with a data set: no Python needed to start a federation.

* :func:`federation_from_dataset` - a :class:`~mfcpl.wire.schemas.FederationCreate` from a data-set folder with
  ``layout.json`` (``mfcpl federation create --from-dataset PATH``): name, modalities, shapes and classes from the
  layout, the feature standardisation from the folder's *training* data (``federated``: statistics of every
  training client combined, via :func:`client_sdk.data.normalize.federated_normalization`).
* :func:`initial_weights` - model version 0 for a federation (``mfcpl model init``); needs torch.
* :func:`load_split` / :func:`score_weights` - a global model version scored on a dev or test file, with the
  federation's normalisation applied first (``mfcpl evaluate``); scoring needs torch.

Everything from ``client_sdk`` is imported inside the functions, so importing this module loads neither torch nor
the data loaders (the other operator commands run on the base install).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from mfcpl.wire.schemas import FederationCreate, ModelVersion, Normalization, NormalizationMode

if TYPE_CHECKING:
    from client_sdk.data.arrays import MultimodalArrays
    from client_sdk.data.federated import FederatedDataset

LAYOUT_FILE = "layout.json"
FEATURE_SUFFIXES = (".safetensors", ".npz")
NORMALIZATION_MODES: tuple[NormalizationMode, ...] = ("federated", "client", "none")
PARTITIONS = ("iid", "dirichlet", "group", "given")
SPLITS = ("test", "dev")
DEFAULT_CLIENTS_PER_ROUND = 10  # FederationCreate's default; fewer when the data set has fewer clients


class DatasetError(ValueError):
    """A data-set folder or feature file that cannot be used as given (the CLI exits 2 with this message)."""


@dataclass(frozen=True)
class PartitionOptions:
    """How ``load_federation`` splits a pooled training file into clients and cuts the dev set (None: its default).

    ``federation create --from-dataset`` computes the ``federated`` statistics over the clients these options
    give, after the dev cut; ``evaluate --split dev`` on a folder without a dev file needs the same cut, which
    depends only on ``dev_fraction`` and ``seed`` (both commands default the seed to the federation's).
    """

    partition: str | None = None
    num_clients: int | None = None
    alpha: float | None = None
    dev_fraction: float | None = None
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def with_seed(self, seed: int) -> PartitionOptions:
        return self if self.seed is not None else PartitionOptions(**{**asdict(self), "seed": seed})


# ------------------------------------------------------------------------------------------------- the folder


def dataset_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a data-set folder holding ``layout.json``; :class:`DatasetError` says what is wrong otherwise."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DatasetError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (give the data-set folder that holds {LAYOUT_FILE})")
    if not (folder / LAYOUT_FILE).is_file():
        raise DatasetError(f"{folder}: no {LAYOUT_FILE} (a data-set folder names its modalities and classes there; "
                           "docs/data.md)")
    return folder


def read_layout(path: str | os.PathLike[str]) -> Any:
    """The :class:`~client_sdk.data.features.FeatureLayout` of a data-set folder (or of the folder a file is in)."""
    from client_sdk.data.features import FeatureFormatError, FeatureLayout, find_layout_file

    target = Path(path).expanduser()
    found = find_layout_file(target)
    if found is not None:
        try:
            return FeatureLayout.from_json(found.read_text())
        except (FeatureFormatError, ValueError) as exc:
            raise DatasetError(f"{found}: {exc}") from None
    raise DatasetError(f"{target}: no {LAYOUT_FILE} " + ("in it" if target.is_dir() else "next to it or one folder up"))


def load_dataset(folder: str | os.PathLike[str], options: PartitionOptions) -> FederatedDataset:
    """The folder's clients, dev and test sets as ``client_sdk.data.load_federation`` loads them."""
    from client_sdk.data import load_federation

    path = dataset_folder(folder)
    read_layout(path)  # a clear message for a bad layout.json before the loader's own
    try:  # an absolute path: a relative one could read as a registered data set's name
        return load_federation(str(path.resolve()), **options.kwargs())
    except (OSError, ValueError, KeyError) as exc:  # DatasetNotFoundError, FeatureFormatError, a bad option
        message = str(exc)
        raise DatasetError(message if message.startswith(str(path.resolve())) else f"{path}: {message}") from None


def _apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """``training.lambda_cmpr=0.5``-style settings on top of ``data`` (values parsed as JSON, else strings)."""
    from mfcpl.experiments.cli import apply_overrides

    for item in assignments:
        key, sep, _ = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise DatasetError(f"--set expects KEY=VALUE (e.g. training.lambda_cmpr=0.5), got {item!r}")
        node: Any = data
        for part in key.split(".")[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise DatasetError(f"--set {item!r}: {key.rpartition('.')[0]} is not a section of the federation "
                                   "config")
    return apply_overrides(data, assignments)


def federation_from_dataset(
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    algorithm: str | None = None,
    rounds: int | None = None,
    clients_per_round: int | None = None,
    seed: int | None = None,
    normalization: NormalizationMode = "federated",
    options: PartitionOptions | None = None,
    overrides: Sequence[str] = (),
    stats_files: Sequence[str | os.PathLike[str]] = (),
) -> tuple[FederationCreate, FederatedDataset | None]:
    """The federation config a data-set folder implies, and the data it was derived from.

    Name, modalities (kinds and shapes), ``num_classes`` and ``class_names`` come from ``layout.json``;
    ``clients_per_round`` defaults to min(10, the folder's training clients); ``normalization`` ``federated``
    computes the statistics from the training clients only (never the dev or test file). ``overrides``
    (``training.lambda_cmpr=0.5``) apply last and may set any field.

    With ``stats_files`` (``mfcpl client stats`` output, one per site) the folder needs only ``layout.json``: the
    federated statistics combine the sites' sums and no training data is read (the data comes back as None).
    """
    if normalization not in NORMALIZATION_MODES:
        raise DatasetError(f"unknown normalization {normalization!r} (one of {', '.join(NORMALIZATION_MODES)})")
    seed = 0 if seed is None else seed
    if stats_files:
        return _federation_from_sums(folder, stats_files, name=name, algorithm=algorithm, rounds=rounds,
                                     clients_per_round=clients_per_round, seed=seed, normalization=normalization,
                                     overrides=overrides), None
    data = load_dataset(folder, (options or PartitionOptions()).with_seed(seed))
    if not data.clients:
        raise DatasetError(f"{folder}: no training clients")
    if normalization == "federated":
        from client_sdk.data.normalize import federated_normalization

        try:
            stats = federated_normalization(data)
        except ValueError as exc:  # nothing to standardise (only text modalities)
            raise DatasetError(f"{exc} (use --normalization none)") from None
    else:
        stats = Normalization(mode=normalization)
    config = _config(folder, data.name, data.num_classes, list(data.class_names), list(data.modalities), stats,
                     name=name, algorithm=algorithm, rounds=rounds,
                     clients_per_round=clients_per_round or min(DEFAULT_CLIENTS_PER_ROUND, len(data.clients)),
                     seed=seed, overrides=overrides)
    return config, data


def _federation_from_sums(folder: str | os.PathLike[str], stats_files: Sequence[str | os.PathLike[str]], *,
                          name: str | None, algorithm: str | None, rounds: int | None, clients_per_round: int | None,
                          seed: int, normalization: NormalizationMode, overrides: Sequence[str]) -> FederationCreate:
    """The config from ``layout.json`` alone, standardised with the combined sums of the sites' stats files."""
    from client_sdk.data.normalize import combine_sums, normalized_specs, sums_from_json

    if normalization != "federated":
        raise DatasetError(f"--stats-from gives federated statistics; it does not go with --normalization "
                           f"{normalization}")
    layout = read_layout(dataset_folder(folder))
    parts = []
    for file in stats_files:
        try:
            parts.append(sums_from_json(json.loads(Path(file).read_text()), str(file)))
        except (OSError, ValueError) as exc:  # unreadable, not JSON, not a sums file
            raise DatasetError(f"{file}: {exc}" if str(file) not in str(exc) else str(exc)) from None
    widths = {spec.name: spec.shape[-1] for spec in normalized_specs(layout.modalities)}
    for file, part in zip(stats_files, parts, strict=True):
        for modality, sums in part.items():
            if modality not in widths:
                raise DatasetError(f"{file}: modality {modality!r} is not a standardised modality of "
                                   f"{folder}/{LAYOUT_FILE} ({', '.join(widths) or 'none'})")
            if len(sums.sum) != widths[modality]:
                raise DatasetError(f"{file}: {modality!r} has {len(sums.sum)} features, the layout says "
                                   f"{widths[modality]}")
    stats = combine_sums(parts)
    if not stats:
        raise DatasetError("the stats files hold no feature rows to standardise")
    return _config(folder, layout.name, layout.num_classes,
                   list(layout.class_names) or [str(i) for i in range(layout.num_classes)], list(layout.modalities),
                   Normalization(mode="federated", stats=stats), name=name, algorithm=algorithm, rounds=rounds,
                   clients_per_round=clients_per_round or min(DEFAULT_CLIENTS_PER_ROUND, len(stats_files)),
                   seed=seed, overrides=overrides)


def _config(folder: str | os.PathLike[str], default_name: str, num_classes: int, class_names: list[str],
            modalities: list[Any], stats: Normalization, *, name: str | None, algorithm: str | None,
            rounds: int | None, clients_per_round: int, seed: int, overrides: Sequence[str]) -> FederationCreate:
    config: dict[str, Any] = {
        "name": name or default_name,
        "num_classes": num_classes,
        "class_names": class_names,
        "modalities": [m.model_dump(mode="json") for m in modalities],
        "clients_per_round": clients_per_round,
        "seed": seed,
        "normalization": stats.model_dump(mode="json", exclude_none=True),
    }
    if algorithm is not None:
        config["algorithm"] = algorithm
    if rounds is not None:
        config["rounds"] = rounds
    config = _apply_overrides(config, overrides)
    try:
        return FederationCreate.model_validate(config)
    except ValidationError as exc:
        raise DatasetError(f"the federation config from {folder} is not valid: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


# ------------------------------------------------------------------------------------------------- model v0


def initial_weights(config: FederationCreate, seed: int | None = None) -> dict[str, np.ndarray]:
    """Model version 0: ``build_model(config, seed)`` as numpy arrays (seed default: the federation's)."""
    from client_sdk.model import build_model
    from client_sdk.torch_io import model_to_numpy

    return model_to_numpy(build_model(config, seed=config.seed if seed is None else seed))


# ------------------------------------------------------------------------------------------------- evaluation


def _layout_matches(layout: Any, config: FederationCreate, where: Path) -> None:
    declared = {m.name: (str(m.kind), list(m.shape)) for m in config.modalities}
    found = {m.name: (str(m.kind), list(m.shape)) for m in layout.modalities}
    if declared != found:
        raise DatasetError(f"{where}: its layout's modalities {json.dumps(found)} are not the federation's "
                           f"{json.dumps(declared)}")
    if layout.num_classes != config.num_classes:
        raise DatasetError(f"{where}: {layout.num_classes} classes, the federation has {config.num_classes}")


def _feature_file(path: Path, layout: Any) -> MultimodalArrays:
    from client_sdk.data.features import FeatureFormatError, load_feature_file

    try:
        return load_feature_file(path, layout)
    except (FeatureFormatError, OSError, ValueError) as exc:
        raise DatasetError(str(exc)) from None


def load_split(path: str | os.PathLike[str], split: str, config: FederationCreate,
               options: PartitionOptions | None = None) -> MultimodalArrays:
    """The samples to score, as loaded (not normalised): a folder's test file, its dev set as
    ``load_federation`` makes it (its dev file, else the cut from the training data: ``options.dev_fraction`` and
    ``options.seed``, default the federation's seed, as at ``federation create``), or one feature file (its
    layout from ``layout.json`` next to it or one folder up). The layout must be the federation's."""
    from client_sdk.data.features import find_split_file

    target = Path(path).expanduser()
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    if target.is_dir():
        folder = dataset_folder(target)
        layout = read_layout(folder)
        _layout_matches(layout, config, folder)
        if split == "dev":
            arrays: MultimodalArrays = load_dataset(folder, (options or PartitionOptions()).with_seed(config.seed)).dev
        elif (test_file := find_split_file(folder, "test")) is not None:
            arrays = _feature_file(test_file, layout)
        else:
            raise DatasetError(f"{folder}: no test set (test.safetensors or test.npz)")
    elif target.is_file():
        if target.suffix not in FEATURE_SUFFIXES:
            raise DatasetError(f"{target}: not a feature file (use {' or '.join(FEATURE_SUFFIXES)}) or a folder")
        layout = read_layout(target)
        _layout_matches(layout, config, target)
        arrays = _feature_file(target, layout)
    else:
        raise DatasetError(f"{target}: no such file or folder")
    if len(arrays) == 0:
        raise DatasetError(f"{target}: the {split} set is empty" + (
            " (no dev file and --dev-fraction 0: use --split test)" if split == "dev" else ""))
    return arrays


def normalized(arrays: MultimodalArrays, config: FederationCreate) -> MultimodalArrays:
    """``arrays`` standardised as the federation says: with its stored statistics (``federated``), with the
    statistics of ``arrays`` themselves (``client``: an evaluator uses those of the data it scores), or as is."""
    from client_sdk.data.normalize import normalize_arrays

    return normalize_arrays(arrays, config.normalization, config.modalities)


def score_weights(config: FederationCreate, weights: Mapping[str, np.ndarray], arrays: MultimodalArrays,
                  model: Any = None, threads: int = 1) -> tuple[dict[str, float], Any]:
    """accuracy, macro_f1, uar, loss (and auc when defined) of ``weights`` on ``arrays`` (already normalised).

    ``model``: a model built earlier for ``config`` to reuse (its weights are replaced); returned for the next call.
    """
    from client_sdk.model import build_model
    from client_sdk.torch_io import load_numpy_weights
    from client_sdk.trainer import evaluate

    if model is None:
        model = build_model(config)
    load_numpy_weights(model, weights)
    return evaluate(model, arrays, config.num_classes, threads=threads), model


def scored_versions(versions: Sequence[ModelVersion], *, version: int | None = None,
                    every: bool = False) -> list[ModelVersion]:
    """Which versions ``mfcpl evaluate`` scores: ``version``, every one (``every``), else the latest."""
    ordered = sorted(versions, key=lambda v: v.version)
    if version is not None:
        chosen = [v for v in ordered if v.version == version]
        if not chosen:
            known = ", ".join(str(v.version) for v in ordered) or "none yet"
            raise LookupError(f"no model version {version} (versions: {known})")
        return chosen
    if not ordered:
        return []
    return ordered if every else ordered[-1:]
