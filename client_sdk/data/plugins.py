"""Data sets provided by other packages through the entry-point group ``mfcpl.datasets``.

A package declares, e.g. in its ``pyproject.toml``::

    [project.entry-points."mfcpl.datasets"]
    my_sensors = "my_package.data:load_my_sensors"

The entry point's name is the data set name; its object a callable ``loader(data_dir: Path, **options) ->
FederatedDataset``. Entry points are listed without importing anything; a plugin's module is imported only
when its data set is loaded, and a plugin that fails to import is reported naming its entry point.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from client_sdk.data.federated import FederatedDataset

ENTRY_POINT_GROUP = "mfcpl.datasets"

PluginLoader = Callable[..., FederatedDataset]


class DatasetPluginError(ValueError):
    """A data set plugin that cannot be imported, is not callable or returns something else."""


def plugin_entry_points() -> dict[str, EntryPoint]:
    """The installed data set plugins by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_names() -> list[str]:
    return sorted(plugin_entry_points())


def _describe(ep: EntryPoint) -> str:
    return f"dataset plugin {ep.name!r} (entry point {ep.name} = {ep.value} in group {ENTRY_POINT_GROUP})"


def load_plugin(name: str) -> PluginLoader:
    """The loader of plugin ``name``, imported now."""
    ep = plugin_entry_points()[name]
    try:
        loader = ep.load()
    except Exception as exc:  # any import-time failure of third-party code becomes one clear line
        raise DatasetPluginError(f"{_describe(ep)} failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(loader):
        raise DatasetPluginError(f"{_describe(ep)} is a {type(loader).__name__}, not a loader function")
    return loader


def takes_option(loader: PluginLoader, option: str) -> bool:
    """Whether ``loader`` names ``option`` as a parameter (a ``**kwargs`` loader gets only what it names)."""
    try:
        return option in inspect.signature(loader).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def call_plugin(name: str, data_dir: Path, options: dict[str, object], seed: int | None = None) -> FederatedDataset:
    """Run plugin ``name``'s loader with ``options``, plus ``seed`` if given and the loader names a ``seed``
    parameter; an option it does not take is a ``ValueError`` naming the data set."""
    loader = load_plugin(name)
    if seed is not None and takes_option(loader, "seed"):
        options = {**options, "seed": seed}
    try:
        federation = loader(data_dir, **options)
    except TypeError as exc:  # an option the loader does not take
        raise ValueError(f"{name}: {exc}") from exc
    if not isinstance(federation, FederatedDataset):
        ep = plugin_entry_points()[name]
        raise DatasetPluginError(f"{_describe(ep)} returned a {type(federation).__name__}, not a FederatedDataset")
    return federation
