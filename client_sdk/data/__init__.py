"""Datasets for local training: the in-memory multimodal container, loaders, partitions, missing modalities."""

from client_sdk.data.arrays import MultimodalArrays

__all__ = ["MultimodalArrays"]
