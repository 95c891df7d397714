"""A small generated multimodal data set in the POOLED folder layout, unlike UCI-HAR (for tests anywhere).

    from tests.data.generated import write_generated_dataset
    layout = write_generated_dataset(tmp_path / "gen")          # then load_federation(str(tmp_path / "gen"), ...)

Three modalities and 4 classes (``GENERATED_LAYOUT``):

* ``stats``: vector [17], features around mean 500 and std 80 (class k adds 200 to feature k); about 10% of the
  samples lack it (``stats.present`` 0; the stored values there are garbage the loader must drop);
* ``motion``: timeseries [20, 5], around -3 with std 0.5 (class k adds 1 to channel k), variable lengths 3..30
  stored padded [N, 30, 5] with ``motion.lengths`` (longer ones are truncated to 20, shorter ones zero-padded);
  about 10% have length 0 (absent);
* ``words``: tokens [7, 6], around 2 with std 3 (class k adds 4 to dimension k), packed rows + ``words.lengths``
  1..9.

``train`` has a ``group`` column (``num_groups`` sites named ``site0``, ``site1``, ...; each group's labels are
skewed towards one class) and no ``client`` column, ``test`` has ``test_samples`` samples, ``dev`` exists only
with ``with_dev=True``. The class is visible in every modality, one direction per class, so even a linear
model sees it (a ridge classifier on the flattened, standardised features: test accuracy 0.84 / 0.94 / 0.88
per modality, 1.0 with all three, for 360 samples). Deterministic in ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from client_sdk.data.features import LAYOUT_FILE, FeatureLayout, save_feature_file
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

GENERATED_LAYOUT = FeatureLayout(
    name="generated",
    modalities=(
        ModalitySpec(name="stats", kind=ModalityKind.VECTOR, shape=[17]),
        ModalitySpec(name="motion", kind=ModalityKind.TIMESERIES, shape=[20, 5]),
        ModalitySpec(name="words", kind=ModalityKind.TOKENS, shape=[7, 6]),
    ),
    num_classes=4,
    class_names=("north", "east", "south", "west"),
)
MOTION_STORED_LENGTH = 30


def generated_tensors(
    rng: np.random.Generator, labels: np.ndarray
) -> dict[str, np.ndarray]:
    """The file tensors for samples of the given ``labels`` (see the module docstring)."""
    n = len(labels)
    rows = np.arange(n)
    stats = rng.normal(500.0, 80.0, size=(n, 17))
    stats[rows, labels] += 200.0  # class k raises feature k (each modality: one direction per class)
    stats_present = rng.random(n) >= 0.1
    stats[~stats_present] = 1e6  # garbage where the modality is absent: the loader zero-fills it
    motion_len = np.where(rng.random(n) < 0.1, 0, rng.integers(3, MOTION_STORED_LENGTH + 1, n))
    motion = np.zeros((n, MOTION_STORED_LENGTH, 5), np.float32)
    for i, length in enumerate(motion_len):
        motion[i, :length] = rng.normal(-3.0, 0.5, size=(length, 5))
        motion[i, :length, labels[i]] += 1.0
    words_len = rng.integers(1, 10, n)
    words = rng.normal(2.0, 3.0, size=(int(words_len.sum()), 6))
    words[np.arange(len(words)), np.repeat(labels, words_len)] += 4.0
    return {
        "label": labels.astype(np.int64),
        "stats": stats.astype(np.float32),
        "stats.present": stats_present.astype(np.uint8),
        "motion": motion,
        "motion.lengths": motion_len.astype(np.int64),
        "words": words.astype(np.float32),
        "words.lengths": words_len.astype(np.int64),
    }


def _group_labels(rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
    """Labels skewed by group: group g draws class g % 4 half of the time, else any class."""
    favourite = groups % 4
    return np.where(rng.random(len(groups)) < 0.5, favourite, rng.integers(0, 4, len(groups))).astype(np.int64)


def write_generated_dataset(
    root: str | os.PathLike[str],
    *,
    num_samples: int = 240,
    num_groups: int = 6,
    test_samples: int = 60,
    with_dev: bool = False,
    fmt: str = "safetensors",
    seed: int = 0,
) -> FeatureLayout:
    """Write the generated data set into folder ``root`` (created) and return its layout.

    Files: ``layout.json``, ``train.<fmt>`` (``num_samples``, pooled, ``group`` column + ``group_names``),
    ``test.<fmt>`` (``test_samples``) and, with ``with_dev``, ``dev.<fmt>`` (``test_samples``).
    ``fmt``: ``safetensors`` or ``npz``.
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (folder / LAYOUT_FILE).write_text(GENERATED_LAYOUT.to_json())
    groups = rng.integers(0, num_groups, num_samples)
    train = generated_tensors(rng, _group_labels(rng, groups))
    train["group"] = groups.astype(np.int64)
    save_feature_file(folder / f"train.{fmt}", train, group_names=[f"site{g}" for g in range(num_groups)])
    save_feature_file(folder / f"test.{fmt}", generated_tensors(rng, rng.integers(0, 4, test_samples)))
    if with_dev:
        save_feature_file(folder / f"dev.{fmt}", generated_tensors(rng, rng.integers(0, 4, test_samples)))
    return GENERATED_LAYOUT
