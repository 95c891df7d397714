"""The wire package: what the coordinator and the client SDK share, in the role ``flwr.common`` plays for Flower.

- :mod:`mfcpl.wire.schemas`: every JSON body of the REST API (pydantic), including the typed settings;
- :mod:`mfcpl.wire.tensors`: the safetensors layouts of models, updates and prototype sets (numpy, no pickle);
- :mod:`mfcpl.wire.errors`: the problem codes and the HTTP status of each;
- :mod:`mfcpl.wire.constants`: the API prefix, media types, header and level names;
- :mod:`mfcpl.wire.plugins`: the registry the algorithm and strategy plug-ins of each side use.

It depends on pydantic and numpy only: never on FastAPI, SQLAlchemy, torch, the coordinator or the SDK.
"""
