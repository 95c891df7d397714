"""Datasets for local training: the in-memory multimodal container, loaders, partitions, missing modalities.

Entry points: :func:`load_federation` (a dataset name, plugin name or folder path -> clients, dev, test,
modality specs), :func:`load_client_data` (a data source string such as ``uci_har:s05_k2`` or
``path/to/ds#c3?partition=dirichlet&num_clients=10`` -> one client's shard) and :func:`normalize_federation`
(feature standardisation, recorded as the wire's ``Normalization``). docs/data.md describes them.
"""

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, DatasetNotFoundError, FederatedDataset, default_data_dir
from client_sdk.data.folder import federation_from_arrays, load_folder_federation
from client_sdk.data.missing import MissingRule, MissingSummary, simulate_missing
from client_sdk.data.normalize import federated_normalization, normalize_arrays, normalize_federation
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
    "federated_normalization",
    "federation_from_arrays",
    "load_client_data",
    "load_federation",
    "load_folder_federation",
    "normalize_arrays",
    "normalize_federation",
    "simulate_missing",
]
