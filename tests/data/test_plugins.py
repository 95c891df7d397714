"""Data set plugins (entry-point group ``mfcpl.datasets``), installed for real: a module and a ``*.dist-info``
folder on ``sys.path`` (in this process, and in a fresh one through PYTHONPATH). The plugin is the worked
example of docs/data.md: a loader that turns a user's CSV into a FederatedDataset."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.plugins import DatasetPluginError
from client_sdk.data.registry import available_datasets, load_client_data, load_federation

REPO = Path(__file__).resolve().parents[2]

# The docs/data.md example, verbatim.
WEATHER_PLUGIN = '''
import csv
from pathlib import Path

import numpy as np

from client_sdk.data import FederatedDataset, MultimodalArrays
from client_sdk.data.features import FeatureLayout
from client_sdk.data.folder import federation_from_arrays
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

LAYOUT = FeatureLayout(
    name="weather",
    modalities=(ModalitySpec(name="sensors", kind=ModalityKind.VECTOR, shape=[4]),),
    num_classes=3,
    class_names=("dry", "wet", "storm"),
)


def _arrays(rows: list[dict[str, str]]) -> MultimodalArrays:
    x = np.array([[float(r[f"x{i}"]) for i in range(4)] for r in rows], dtype=np.float32).reshape(-1, 4)
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    return MultimodalArrays({"sensors": x}, {"sensors": np.ones(len(rows), bool)}, labels)


def load_weather(data_dir: Path, seed: int = 0, dev_fraction: float | None = None) -> FederatedDataset:
    """<data_dir>/weather/weather.csv: columns site, split (train/test), label, x0..x3."""
    with open(data_dir / "weather" / "weather.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    sites = sorted({r["site"] for r in train})
    groups = np.array([sites.index(r["site"]) for r in train])
    return federation_from_arrays(LAYOUT, _arrays(train), _arrays(test), groups=groups, group_names=sites,
                                  dev_fraction=dev_fraction, seed=seed)
'''

ENTRY_POINTS = """[mfcpl.datasets]
weather = weather_plugin:load_weather
broken_weather = weather_broken:load
layout_not_loader = weather_plugin:LAYOUT
"""


def _install(site: Path) -> None:
    (site / "weather_plugin.py").write_text(WEATHER_PLUGIN)
    (site / "weather_broken.py").write_text("import a_package_that_is_not_installed_xyz\n")
    dist = site / "weather_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: weather-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)


def _write_csv(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["site,split,label,x0,x1,x2,x3"]
    for i in range(150):
        label = int(rng.integers(0, 3))
        split = "test" if i % 5 == 0 else "train"
        x = rng.normal(10 * label, 1, 4)
        lines.append(f"{['oslo', 'rome', 'lima'][i % 3]},{split},{label}," + ",".join(f"{v:.4f}" for v in x))
    (data_dir / "weather").mkdir(parents=True)
    (data_dir / "weather" / "weather.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    _write_csv(tmp_path / "datasets")
    monkeypatch.syspath_prepend(str(site))
    yield tmp_path / "datasets"
    for module in ("weather_plugin", "weather_broken"):
        sys.modules.pop(module, None)


def test_a_plugin_data_set_loads_and_repartitions(plugin_site: Path) -> None:
    names = available_datasets()
    assert {"weather", "broken_weather", "layout_not_loader", "uci_har", "fsdd_av"} <= set(names)
    assert "weather_broken" not in sys.modules and "weather_plugin" not in sys.modules  # listed, not imported

    fed = load_federation("weather", plugin_site, seed=3)
    assert fed.client_names == ["lima", "oslo", "rome"] and fed.name == "weather"
    assert len(fed.test) == 30 and fed.num_train_samples + len(fed.dev) == 120
    assert fed.options["seed"] == 3 and fed.options["partition"] == "given" and fed.options["dev_fraction"] == 0.2
    assert 20 <= len(fed.dev) <= 28

    options = {"partition": "dirichlet", "num_clients": 4, "alpha": 1.0, "seed": 2}
    split = load_federation("weather", plugin_site, **options)
    assert split.client_names == ["c0", "c1", "c2", "c3"] and split.options["alpha"] == 1.0
    node = load_client_data("weather:c2?partition=dirichlet&num_clients=4&alpha=1.0&seed=2", plugin_site)
    np.testing.assert_array_equal(node.data.inputs["sensors"], split.client("c2").data.inputs["sensors"])
    assert len(load_federation("weather", plugin_site, dev_fraction=0.5).dev) >= 50  # a native option


def test_plugin_failures_are_one_clear_line(plugin_site: Path) -> None:
    with pytest.raises(DatasetPluginError, match=r"'broken_weather' \(entry point broken_weather = weather_broken"
                                                 r":load in group mfcpl.datasets\) failed to load: ModuleNotFound"):
        load_federation("broken_weather", plugin_site)
    with pytest.raises(DatasetPluginError, match="is a FeatureLayout, not a loader function"):
        load_federation("layout_not_loader", plugin_site)
    with pytest.raises(ValueError, match="weather: .*colour"):
        load_federation("weather", plugin_site, colour="red")
    with pytest.raises(ValueError, match="num_clients does not apply to partition=given"):
        load_federation("weather", plugin_site, num_clients=3)


def test_a_fresh_process_finds_the_plugin_through_pythonpath(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    _write_csv(tmp_path / "datasets")
    data_dir = str(tmp_path / "datasets")
    code = (
        "from client_sdk.data import available_datasets, load_federation\n"
        "print(available_datasets())\n"
        f"print(load_federation('weather', {data_dir!r}, partition='iid', num_clients=5).client_names)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert "'weather'" in out[0] and out[1] == "['c0', 'c1', 'c2', 'c3', 'c4']"
