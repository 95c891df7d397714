"""mfcpl: federated learning for multimodal data with missing modalities.

Three packages make the product: :mod:`mfcpl.wire` (the contract both sides share: JSON schemas, tensor
layouts, error codes), :mod:`coordinator` (the FastAPI service) and :mod:`client_sdk` (the HTTP client and
local training). The coordinator and the SDK import only ``mfcpl.wire`` from each other's world;
:mod:`mfcpl.cli` and :mod:`mfcpl.experiments` sit above both. Importing this package imports nothing else.
"""

__version__ = "0.1.0"
