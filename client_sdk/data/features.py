"""Feature-file datasets laid out like FedMultimodal's Hateful Memes and MELD features, without pickle.

FedMultimodal stores one pickle per client; here the same content lives in safetensors or npz files
(``np.load(..., allow_pickle=False)``), one of three layouts under a dataset folder ``<root>``
(read by :mod:`client_sdk.data.folder`, which also partitions and cuts the dev set)::

    <root>/layout.json                      the FeatureLayout (else pass a preset)
    <root>/clients/<client>.safetensors     per-client layout: one file per client (or .npz) ...
    <root>/train.safetensors                ... or one file for all clients, with a `client` column, or pooled:
                                            no `client` column, optional `group` column (+ `group_names`)
    <root>/dev.safetensors                  pooled dev set (optional)
    <root>/test.safetensors                 test set

Tensors in every file (N samples):

* ``label``: int [N], class ids in ``0..num_classes-1``;
* ``<m>`` for each modality ``m`` of the layout, one of
  - fixed size: ``[N, *shape]`` (e.g. image ``[N, 1280]``);
  - padded sequences: ``[N, L_file, D]`` with optional ``<m>.lengths`` int [N] (valid rows per sample);
  - packed sequences: ``[sum(lengths), D]`` with ``<m>.lengths`` int [N] (sample i is the next
    ``lengths[i]`` rows);
* ``<m>.present`` (optional): bool/uint8 [N], 0 where the sample lacks the modality (its values are ignored);
* ``client`` (one-file layout only): int [N] client id; names come from the metadata key / npz array
  ``client_names`` (a JSON list / a unicode array indexed by id), else ``c<id>``;
* ``group`` (pooled layout only, optional): int [N] group id (subject, speaker, site); names from
  ``group_names`` likewise, else ``g<id>``.

Sequences are truncated (first rows kept) or zero-padded to the layout's length; a sample with zero rows
counts as missing. The layout maps each modality to a :class:`~mfcpl.wire.schemas.ModalitySpec` kind:
``vector`` [D], ``tokens`` [L, D] (token features), ``timeseries`` [T, F] (frames), ``text`` [L] (token ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import DatasetNotFoundError, FederatedDataset
from mfcpl.wire import tensors as st
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

FILE_SUFFIXES = (".safetensors", ".npz")
LAYOUT_FILE = "layout.json"
NAME_LISTS = ("client_names", "group_names")
"""Names indexed by the ``client`` / ``group`` column: safetensors metadata (JSON lists) or npz unicode arrays."""


def find_layout_file(path: str | os.PathLike[str]) -> Path | None:
    """The ``layout.json`` of a data-set folder, or of a feature file (next to it or one folder up); None if none."""
    target = Path(path).expanduser()
    folders = [target] if target.is_dir() else [target.parent, target.parent.parent]
    return next((folder / LAYOUT_FILE for folder in folders if (folder / LAYOUT_FILE).is_file()), None)


class FeatureFormatError(ValueError):
    """A feature file whose tensors do not follow the documented layout."""


@dataclass(frozen=True)
class FeatureLayout:
    """What a feature dataset holds: its modalities (with the fixed per-sample shapes) and classes."""

    name: str
    modalities: tuple[ModalitySpec, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")
        if not self.modalities:
            raise ValueError("a layout needs at least one modality")
        names = [spec.name for spec in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        for spec in self.modalities:
            if spec.kind in (ModalityKind.TOKENS, ModalityKind.TIMESERIES) and len(spec.shape) != 2:
                raise ValueError(f"{spec.name}: a {spec.kind} modality has shape [length, features]")
            if spec.kind in (ModalityKind.VECTOR, ModalityKind.TEXT) and len(spec.shape) != 1:
                raise ValueError(f"{spec.name}: a {spec.kind} modality has a one-dimensional shape")

    def with_lengths(self, **lengths: int) -> FeatureLayout:
        """A copy whose sequence modalities get new lengths, e.g. ``with_lengths(text=32)``."""
        specs = []
        for spec in self.modalities:
            if spec.name in lengths:
                specs.append(spec.model_copy(update={"shape": [lengths[spec.name], *spec.shape[1:]]}))
            else:
                specs.append(spec)
        unknown = set(lengths) - {s.name for s in self.modalities}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}")
        return FeatureLayout(self.name, tuple(specs), self.num_classes, self.class_names)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "num_classes": self.num_classes,
                "class_names": list(self.class_names),
                "modalities": [m.model_dump(mode="json") for m in self.modalities],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureLayout:
        """The layout in ``layout.json``; any problem is one :class:`FeatureFormatError` line."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            missing = [key for key in ("name", "num_classes", "modalities") if key not in raw]
            if missing:
                raise ValueError(f"missing field(s) {missing}")
            return cls(
                name=str(raw["name"]),
                modalities=tuple(_modality_spec(i, m) for i, m in enumerate(raw["modalities"])),
                num_classes=int(raw["num_classes"]),
                class_names=tuple(raw.get("class_names") or ()),
            )
        except (TypeError, ValueError) as exc:
            raise FeatureFormatError(f"invalid {LAYOUT_FILE}: {exc}") from exc


def _modality_spec(index: int, raw: object) -> ModalitySpec:
    try:
        return ModalitySpec.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"modalities[{index}].{_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    """A pydantic error as one line: where and what, e.g. ``name: String should match pattern ...``."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "value"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']} (got {error.get('input')!r}){more}"


# FedMultimodal's feature extractors: MobileNetV2 image vectors (1280), MobileBERT last hidden states (512 per
# token), 80-bin log-mel frames (25 ms / 10 ms, at most 1000 frames). The text length is our choice (R).
HATEFUL_MEMES = FeatureLayout(
    name="hateful_memes",
    modalities=(
        ModalitySpec(name="image", kind=ModalityKind.VECTOR, shape=[1280]),
        ModalitySpec(name="text", kind=ModalityKind.TOKENS, shape=[64, 512]),
    ),
    num_classes=2,
    class_names=("not_hateful", "hateful"),
)
MELD = FeatureLayout(
    name="meld",
    modalities=(
        ModalitySpec(name="audio", kind=ModalityKind.TIMESERIES, shape=[1000, 80]),
        ModalitySpec(name="text", kind=ModalityKind.TOKENS, shape=[64, 512]),
    ),
    num_classes=4,
    class_names=("neutral", "sadness", "joy", "anger"),
)
PRESETS: dict[str, FeatureLayout] = {HATEFUL_MEMES.name: HATEFUL_MEMES, MELD.name: MELD}


# ---------------------------------------------------------------------------------------------- reading


def read_tensor_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a ``.safetensors`` or ``.npz`` file (never unpickles) and its string metadata."""
    p = Path(path)
    if p.suffix == ".safetensors":
        try:
            return st.decode(p.read_bytes())
        except st.TensorFormatError as exc:
            raise FeatureFormatError(f"{p}: {exc}") from exc
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except ValueError as exc:  # object arrays need pickle: refused
            raise FeatureFormatError(f"{p}: {exc}") from exc
        meta = {key: json.dumps([str(x) for x in arrays.pop(key)]) for key in NAME_LISTS if key in arrays}
        return arrays, meta
    raise FeatureFormatError(f"{p}: unsupported file type (use {' or '.join(FILE_SUFFIXES)})")


def fit_length(seq: np.ndarray, length: int) -> np.ndarray:
    """``seq`` [L, ...] truncated to its first ``length`` rows or zero-padded at the end."""
    if len(seq) >= length:
        return seq[:length]
    pad = np.zeros((length - len(seq), *seq.shape[1:]), dtype=seq.dtype)
    return np.concatenate([seq, pad])


def _sequences(name: str, x: np.ndarray, lengths: np.ndarray | None, n: int, feat_shape: tuple[int, ...]) -> list:
    """Per-sample sequences from a padded [N, L, ...] or packed [sum(L), ...] tensor."""
    if lengths is not None:
        lengths = np.asarray(lengths).astype(np.int64)
        if lengths.shape != (n,) or (lengths < 0).any():
            raise FeatureFormatError(f"{name}.lengths must be [N={n}] non-negative integers")
    if x.ndim == len(feat_shape) + 2:  # padded
        if len(x) != n or x.shape[2:] != feat_shape:
            raise FeatureFormatError(f"{name}: expected [N={n}, L, {list(feat_shape)}], got {list(x.shape)}")
        if lengths is None:
            return list(x)
        if (lengths > x.shape[1]).any():
            raise FeatureFormatError(f"{name}.lengths exceed the padded length {x.shape[1]}")
        return [x[i, : lengths[i]] for i in range(n)]
    if x.ndim == len(feat_shape) + 1 and lengths is not None:  # packed
        if x.shape[1:] != feat_shape or int(lengths.sum()) != len(x):
            raise FeatureFormatError(
                f"{name}: packed rows {list(x.shape)} do not match sum({name}.lengths)={int(lengths.sum())} "
                f"x {list(feat_shape)}"
            )
        return np.split(x, np.cumsum(lengths)[:-1])
    raise FeatureFormatError(
        f"{name}: expected padded [N, L, {list(feat_shape)}] or packed [rows, {list(feat_shape)}] + {name}.lengths, "
        f"got {list(x.shape)}"
    )


def _modality(spec: ModalitySpec, tensors: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The modality's [N, *shape] array and [N] presence mask."""
    name = spec.name
    if name not in tensors:
        raise FeatureFormatError(f"missing tensor {name!r} (have {sorted(tensors)})")
    x = tensors[name]
    dtype = np.int64 if spec.kind is ModalityKind.TEXT else np.float32
    shape = tuple(spec.shape)
    present = np.ones(n, dtype=bool)
    if f"{name}.present" in tensors:
        mask = np.asarray(tensors[f"{name}.present"])
        if mask.shape != (n,):
            raise FeatureFormatError(f"{name}.present must be [N={n}]")
        present = mask.astype(bool)
    if spec.kind is ModalityKind.VECTOR:
        if x.shape != (n, *shape):
            raise FeatureFormatError(f"{name}: expected [N={n}, {shape[0]}], got {list(x.shape)}")
        out = x.astype(dtype)
    else:
        length, feat_shape = shape[0], shape[1:]
        seqs = _sequences(name, x, tensors.get(f"{name}.lengths"), n, feat_shape)
        out = np.zeros((n, *shape), dtype=dtype)
        for i, seq in enumerate(seqs):
            if len(seq) == 0:
                present[i] = False
            else:
                out[i] = fit_length(seq, length)
    out[~present] = 0
    if not np.isfinite(out).all():
        raise FeatureFormatError(f"{name}: values must be finite")
    return out, present


def arrays_from_tensors(tensors: Mapping[str, np.ndarray], layout: FeatureLayout) -> MultimodalArrays:
    """One file's tensors as :class:`MultimodalArrays` shaped by ``layout``."""
    if "label" not in tensors:
        raise FeatureFormatError("missing tensor 'label'")
    labels = np.asarray(tensors["label"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise FeatureFormatError(f"label must be a 1-D integer tensor, got {labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        bad = (labels < 0) | (labels >= layout.num_classes)
        raise FeatureFormatError(
            f"labels must lie in 0..{layout.num_classes - 1} (class ids from 0; num_classes is {layout.num_classes}): "
            f"{int(bad.sum())} of {len(labels)} rows are outside, e.g. {int(labels[bad][0])} at row "
            f"{int(np.flatnonzero(bad)[0])}")
    n = len(labels)
    inputs, present = {}, {}
    for spec in layout.modalities:
        inputs[spec.name], present[spec.name] = _modality(spec, tensors, n)
    return MultimodalArrays(inputs=inputs, present=present, labels=labels.astype(np.int64))


def load_feature_file(path: str | os.PathLike[str], layout: FeatureLayout) -> MultimodalArrays:
    tensors, _ = read_tensor_file(path)
    try:
        return arrays_from_tensors(tensors, layout)
    except FeatureFormatError as exc:
        raise FeatureFormatError(f"{path}: {exc}") from exc


def find_split_file(root: Path, stem: str) -> Path | None:
    """``<root>/<stem>.safetensors`` or ``<root>/<stem>.npz``, whichever exists first."""
    for suffix in FILE_SUFFIXES:
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def resolve_layout(root: Path, layout: FeatureLayout | str | None) -> FeatureLayout:
    """``layout`` itself, a preset by name, or ``<root>/layout.json``."""
    if isinstance(layout, FeatureLayout):
        return layout
    if layout is not None:
        if layout not in PRESETS:
            raise ValueError(f"unknown feature layout {layout!r} (presets: {sorted(PRESETS)})")
        return PRESETS[layout]
    if not (root / LAYOUT_FILE).is_file():
        raise DatasetNotFoundError(f"{root}: no {LAYOUT_FILE} and no layout given")
    return FeatureLayout.from_json((root / LAYOUT_FILE).read_text())


def load_feature_federation(
    root: str | os.PathLike[str],
    layout: FeatureLayout | str | None = None,
    *,
    clients: Sequence[str] | None = None,
    max_clients: int | None = None,
) -> FederatedDataset:
    """A feature data set folder split into its own clients, with its dev file or an empty dev set.

    ``layout``: a :class:`FeatureLayout`, a preset name (``hateful_memes``, ``meld``) or None to read
    ``<root>/layout.json``. ``clients`` keeps only those names; ``max_clients`` the first ones (sorted by name
    in the per-client layout, by id in the one-file layout). For partitions, a dev cut and pooled data use
    :func:`client_sdk.data.folder.load_folder_federation`.
    """
    from client_sdk.data.folder import load_folder_federation

    base = Path(root)
    no_dev = base.is_dir() and find_split_file(base, "dev") is None
    return load_folder_federation(
        base, layout, dev_fraction=0.0 if no_dev else None, clients=clients, max_clients=max_clients
    )


# ---------------------------------------------------------------------------------------------- writing


def save_feature_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    client_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
) -> Path:
    """Write ``tensors`` in the layout above (``.safetensors`` or ``.npz`` by suffix); a helper for converters.

    ``client_names`` / ``group_names`` name the ids of the ``client`` / ``group`` column.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = {k: list(v) for k, v in (("client_names", client_names), ("group_names", group_names)) if v is not None}
    if p.suffix == ".safetensors":
        meta = {k: json.dumps(v) for k, v in names.items()} or None
        p.write_bytes(st.encode({k: np.ascontiguousarray(v) for k, v in tensors.items()}, meta))
    elif p.suffix == ".npz":
        extra = {k: np.array(v, dtype=str) for k, v in names.items()}
        np.savez(p, **tensors, **extra)  # type: ignore[arg-type]  # numpy's stub: a key might be allow_pickle
    else:
        raise FeatureFormatError(f"{p}: unsupported file type (use {' or '.join(FILE_SUFFIXES)})")
    return p
