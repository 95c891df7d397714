"""mfcpl client SDK: the HTTP client for the coordinator, MFCPL local training and the experiment tools.

Importing this package needs neither torch nor FastAPI: the torch parts live in submodules that are
imported on use (``client_sdk.model``, ``client_sdk.losses``, ``client_sdk.trainer``, ...).
"""


