"""mfcpl coordinator: the FastAPI service that runs federations. It never imports torch."""

__version__ = "0.1.0"
