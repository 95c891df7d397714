"""A data set given by folder path: ``layout.json`` plus feature files, split into clients by the tool.

Layouts (``<root>/layout.json`` is required unless a layout is passed; docs/data.md "Bring your own data")::

    <root>/clients/<client>.safetensors   per-client: one file per client (or .npz)
    <root>/train.safetensors              one file with a `client` column (the data set's own clients), or
                                          POOLED: no `client` column, optionally a `group` column (subject,
                                          speaker, site; names in `group_names`), partitioned here
    <root>/dev.safetensors                optional; without it `dev_fraction` of the training data is cut
    <root>/test.safetensors               required

The dev cut is stratified by class within each client / group (or over the whole pool without groups), with
the carried rounding error of :func:`dev_positions`; a group's cut depends only on (seed, group name), so one
node can load just its own file and still get exactly its share.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.features import (
    FILE_SUFFIXES,
    LAYOUT_FILE,
    FeatureFormatError,
    FeatureLayout,
    arrays_from_tensors,
    find_split_file,
    load_feature_file,
    read_tensor_file,
    resolve_layout,
)
from client_sdk.data.federated import ClientShard, DatasetNotFoundError, FederatedDataset
from client_sdk.data.partition import PartitionRequest, PartitionSpec, Pool, Scheme, partition_pool

DEFAULT_DEV_FRACTION = 0.2
_DEV_STREAM = 3
FOLDER_OPTIONS = ("partition", "num_clients", "alpha", "seed", "dev_fraction", "min_size", "max_clients", "clients")


def is_path_syntax(name: str) -> bool:
    """A data set argument written as a path: it has a ``/`` or starts with ``.`` or ``~`` (an existing folder
    named like a registered data set is a path only when written so, e.g. ``./meld``)."""
    return "/" in name or name.startswith((".", "~"))


# ---------------------------------------------------------------------------------------------- the train pool


def _id_column(path: Path, tensors: Mapping[str, np.ndarray], column: str, n: int) -> np.ndarray:
    ids = np.asarray(tensors[column])
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or (n and ids.min() < 0):
        raise FeatureFormatError(f"{path}: {column} must be [N={n}] non-negative integers, got {ids.dtype} "
                                 f"{list(ids.shape)}")
    return ids.astype(np.int64)


def _id_names(path: Path, meta: Mapping[str, str], key: str, ids: np.ndarray, prefix: str) -> tuple[str, ...]:
    """A name for every id ``0..max(ids)``: from the ``key`` name list where it has one, else ``<prefix><id>``."""
    try:
        listed = [str(x) for x in json.loads(meta[key])] if key in meta else []
    except json.JSONDecodeError as exc:
        raise FeatureFormatError(f"{path}: {key} is not a JSON list: {exc}") from exc
    top = int(ids.max()) + 1 if len(ids) else 0
    return tuple(listed[i] if i < len(listed) else f"{prefix}{i}" for i in range(max(top, len(listed))))


def _one_file_pool(path: Path, layout: FeatureLayout) -> Pool:
    """``train`` with a ``client`` column (the data set's clients) or pooled (``group`` column optional)."""
    tensors, meta = read_tensor_file(path)
    try:
        data = arrays_from_tensors(tensors, layout)
    except FeatureFormatError as exc:
        raise FeatureFormatError(f"{path}: {exc}") from exc
    n, rows = len(data), np.arange(len(data))
    if "client" in tensors:
        ids = _id_column(path, tensors, "client", n)
        names = _id_names(path, meta, "client_names", ids, "c")
        return Pool(data, rows, ids, names, tuple(range(len(names))), given=True)
    if "group" in tensors:
        ids = _id_column(path, tensors, "group", n)
        names = _id_names(path, meta, "group_names", ids, "g")
        return Pool(data, rows, ids, names, names, given=False)
    return Pool(data, rows)


def _per_client_pool(folder: Path, layout: FeatureLayout, only: Sequence[str] | None) -> Pool:
    """``clients/<name>.*``, sorted by name (only the ``only`` ones when given); group k = the k-th file."""
    files = sorted(p for p in folder.iterdir() if p.suffix in FILE_SUFFIXES)
    if only is not None:
        files = [p for p in files if p.stem in set(only)]
    if not files:
        raise DatasetNotFoundError(f"{folder}: no client files (*.safetensors / *.npz)"
                                   + (f" named {sorted(only)}" if only is not None else ""))
    parts = [load_feature_file(p, layout) for p in files]
    data = MultimodalArrays(
        inputs={m: np.concatenate([d.inputs[m] for d in parts]) for m in parts[0].inputs},
        present={m: np.concatenate([d.present[m] for d in parts]) for m in parts[0].present},
        labels=np.concatenate([d.labels for d in parts]),
    )
    names = tuple(p.stem for p in files)
    return Pool(
        data=data,
        indices=np.concatenate([np.arange(len(d)) for d in parts]),
        groups=np.concatenate([np.full(len(d), k, dtype=np.int64) for k, d in enumerate(parts)]),
        group_names=names,
        group_subjects=names,
        given=True,
    )


def read_train_pool(root: Path, layout: FeatureLayout, only: Sequence[str] | None = None) -> tuple[Pool, str]:
    """The training samples of a folder and the name of its layout (``clients``, ``client column``, ``pooled``).

    ``only``: in the per-client layout, read just these clients' files.
    """
    if (root / "clients").is_dir():
        return _per_client_pool(root / "clients", layout, only), "clients"
    train = find_split_file(root, "train")
    if train is None:
        raise DatasetNotFoundError(f"{root}: no training data (expected clients/ or train.safetensors / train.npz)")
    pool = _one_file_pool(train, layout)
    return pool, "client column" if pool.given else "pooled"


# ---------------------------------------------------------------------------------------------- the dev cut


def dev_positions(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``fraction`` of the samples, stratified by class.

    Classes in random order; each takes ``round(fraction * its count + carried)`` random samples, where
    ``carried`` is what earlier classes fell short of (or overshot) their target, so the total stays close to
    ``fraction`` even when every class is small.
    """
    taken: list[np.ndarray] = []
    carried = 0.0
    classes = np.unique(labels)
    rng.shuffle(classes)
    for cls in classes:
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        target = fraction * len(idx) + carried
        k = int(min(max(np.floor(target + 0.5), 0), len(idx)))
        taken.append(idx[:k])
        carried = target - k
    return np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)


def _dev_rng(seed: int, group: str | None) -> np.random.Generator:
    key = [seed, _DEV_STREAM] + ([zlib.crc32(group.encode())] if group is not None else [])
    return np.random.default_rng(np.random.SeedSequence(key))


def cut_dev(pool: Pool, fraction: float, seed: int) -> tuple[Pool, np.ndarray]:
    """``pool`` without its dev cut, and the dev positions (in ``pool``): see :func:`dev_positions`."""
    if not 0 <= fraction < 1:
        raise ValueError(f"dev_fraction must lie in [0, 1), got {fraction}")
    labels = pool.data.labels
    if fraction == 0:
        dev = np.zeros(0, dtype=np.int64)
    elif pool.groups is None:
        dev = dev_positions(labels, fraction, _dev_rng(seed, None))
    else:
        parts = [
            pos[dev_positions(labels[pos], fraction, _dev_rng(seed, pool.group_name(int(g))))]
            for g in np.unique(pool.groups)
            for pos in [np.flatnonzero(pool.groups == g)]
        ]
        dev = np.sort(np.concatenate(parts))
    keep = np.setdiff1d(np.arange(len(pool)), dev)
    return pool_subset(pool, keep), dev


def pool_subset(pool: Pool, positions: np.ndarray) -> Pool:
    return Pool(
        data=pool.data.subset(positions),
        indices=pool.indices[positions],
        groups=None if pool.groups is None else pool.groups[positions],
        group_names=pool.group_names,
        group_subjects=pool.group_subjects,
        given=pool.given,
    )


# ---------------------------------------------------------------------------------------------- the loader


def _refuse_unknown(root: Path, options: Mapping[str, object]) -> None:
    if options:
        raise ValueError(f"{root}: unknown option(s) {sorted(options)} for a folder data set "
                         f"(it takes {', '.join(FOLDER_OPTIONS)}, layout)")


def _only_files(root: Path, request: PartitionRequest) -> Sequence[str] | None:
    """Which client files suffice: the selected ones, when the partition keeps the files' own clients."""
    own_clients = request.partition in (None, Scheme.GIVEN, Scheme.GROUP)
    if (root / "clients").is_dir() and own_clients and request.max_clients is None:
        return request.clients
    return None


def _layout(root: Path, layout: FeatureLayout | str | None) -> FeatureLayout:
    try:
        return resolve_layout(root, layout)
    except DatasetNotFoundError:
        raise DatasetNotFoundError(
            f"{root}: no {LAYOUT_FILE} (a data set folder needs one: name, num_classes, class_names, "
            "modalities [{name, kind, shape}]; see docs/data.md)"
        ) from None
    except FeatureFormatError as exc:
        raise FeatureFormatError(f"{root / LAYOUT_FILE}: {exc}") from exc


def _dev_split(
    root: Path, layout: FeatureLayout, pool: Pool, dev_fraction: float | None, seed: int
) -> tuple[Pool, MultimodalArrays, np.ndarray | None, float | None]:
    """(training pool, dev set, dev rows or None for a dev file, the fraction cut or None)."""
    dev_file = find_split_file(root, "dev")
    if dev_file is not None:
        if dev_fraction is not None:
            raise ValueError(f"{root}: has its own dev set ({dev_file.name}); dev_fraction does not apply")
        return pool, load_feature_file(dev_file, layout), None, None
    fraction = DEFAULT_DEV_FRACTION if dev_fraction is None else float(dev_fraction)
    train, dev = cut_dev(pool, fraction, seed)
    return train, pool.data.subset(dev), pool.indices[dev], fraction


def load_folder_federation(
    root: str | os.PathLike[str],
    layout: FeatureLayout | str | None = None,
    *,
    dev_fraction: float | None = None,
    **options: object,
) -> FederatedDataset:
    """The data set in folder ``root`` (layouts in the module docstring), partitioned as ``options`` ask.

    ``layout``: a :class:`FeatureLayout`, a preset name, or None for ``<root>/layout.json``. ``options``: the
    partition options of :class:`~client_sdk.data.partition.PartitionRequest` (``partition``, ``num_clients``,
    ``alpha``, ``min_size``, ``seed``, ``max_clients``, ``clients``); ``dev_fraction`` (default 0.2) applies
    only without a dev file. Anything else is refused.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"no data set folder at {base}")
    spec_layout = _layout(base, layout)
    request, rest = PartitionRequest.from_options(options)
    _refuse_unknown(base, rest)
    test_file = find_split_file(base, "test")
    if test_file is None:
        raise DatasetNotFoundError(f"{base}: no test set (expected {base / 'test.safetensors'} or {base / 'test.npz'})")
    pool, kind = read_train_pool(base, spec_layout, _only_files(base, request))
    train, dev, dev_indices, fraction = _dev_split(base, spec_layout, pool, dev_fraction, request.seed)
    spec = request.resolve(train)
    options = {"root": str(base), "layout": kind, **spec.to_options(), "dev_fraction": fraction}
    test = load_feature_file(test_file, spec_layout)
    return _assemble(spec_layout, partition_pool(train, spec), dev, dev_indices, test, options)


def _assemble(
    layout: FeatureLayout,
    clients: list[ClientShard],
    dev: MultimodalArrays,
    dev_indices: np.ndarray | None,
    test: MultimodalArrays,
    options: dict[str, object],
) -> FederatedDataset:
    return FederatedDataset(
        name=layout.name,
        clients=clients,
        dev=dev,
        test=test,
        modalities=list(layout.modalities),
        num_classes=layout.num_classes,
        class_names=list(layout.class_names) or [str(i) for i in range(layout.num_classes)],
        dev_indices=dev_indices,
        options=options,
    )


def _check_arrays(layout: FeatureLayout, **arrays: MultimodalArrays | None) -> None:
    expected = sorted(spec.name for spec in layout.modalities)
    for which, data in arrays.items():
        if data is not None and sorted(data.inputs) != expected:
            raise ValueError(f"{which}: modalities {sorted(data.inputs)}, the layout has {expected}")


def federation_from_arrays(
    layout: FeatureLayout,
    train: MultimodalArrays,
    test: MultimodalArrays,
    *,
    dev: MultimodalArrays | None = None,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] = (),
    dev_fraction: float | None = None,
    seed: int = 0,
) -> FederatedDataset:
    """In-memory data (e.g. read by a plugin from a user's CSV) as a federation split into its own clients.

    Clients: one per id of ``groups`` ([N] non-negative ints; named by ``group_names``, else ``g<id>``), or a
    single client ``all`` without groups; ``load_federation`` can then re-partition them (``partition=iid``,
    ``dirichlet``). Without ``dev``, ``dev_fraction`` (default 0.2) of ``train`` is cut per group and class as
    for a folder, seeded by ``seed``.
    """
    _check_arrays(layout, train=train, test=test, dev=dev)
    ids = np.zeros(len(train), np.int64) if groups is None else np.asarray(groups).astype(np.int64)
    if ids.shape != (len(train),) or (len(ids) and ids.min() < 0):
        raise ValueError(f"groups must be [N={len(train)}] non-negative integers")
    names = ("all",) if groups is None else tuple(str(name) for name in group_names)
    pool = Pool(train, np.arange(len(train)), ids, names, names, given=True)
    dev_indices: np.ndarray | None = None
    fraction: float | None = None
    if dev is None:
        fraction = DEFAULT_DEV_FRACTION if dev_fraction is None else float(dev_fraction)
        pool, dev_indices = cut_dev(pool, fraction, seed)
        dev = train.subset(dev_indices)
    elif dev_fraction is not None:
        raise ValueError("dev_fraction applies only without a dev set")
    spec = PartitionSpec(Scheme.GIVEN, seed)
    options = {**spec.to_options(), "dev_fraction": fraction}
    return _assemble(layout, partition_pool(pool, spec), dev, dev_indices, test, options)
