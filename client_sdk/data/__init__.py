"""Datasets for local training: the in-memory multimodal container, loaders, partitions, missing modalities.

Entry points: :func:`load_federation` (a dataset name -> clients, dev, test, modality specs) and
:func:`load_client_data` (a data source string such as ``uci_har:s05_k2`` -> one client's shard).
"""

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, DatasetNotFoundError, FederatedDataset, default_data_dir
from client_sdk.data.missing import MissingRule, MissingSummary, simulate_missing
from client_sdk.data.registry import DataSource, available_datasets, load_client_data, load_federation

__all__ = [
    "ClientShard",
    "DataSource",
    "DatasetNotFoundError",
    "FederatedDataset",
    "MissingRule",
    "MissingSummary",
    "MultimodalArrays",
    "available_datasets",
    "default_data_dir",
    "load_client_data",
    "load_federation",
    "simulate_missing",
]
