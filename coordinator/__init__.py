"""mfcpl coordinator: the FastAPI service that runs federations. It never imports torch."""


