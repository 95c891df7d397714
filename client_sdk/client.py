"""Typed, retrying HTTP client for the mfcpl coordinator (the REST contract of :mod:`mfcpl.wire.schemas`).

One :class:`MfcplClient` serves operators (admin token) and edge nodes (client token)::

    with MfcplClient("http://coordinator:8000", token=admin_token) as mfcpl:
        fed = mfcpl.federations.create(FederationCreate(...))
        node = mfcpl.clients.enroll(fed.id, "node-1")

Behaviour shared by every call:

- typed errors by status that carry the coordinator's problem details (:mod:`client_sdk.errors`);
- retries on connection errors, timeouts, 408, 429 and 5xx with exponential backoff and full jitter,
  honouring ``Retry-After`` (seconds or an HTTP date), both capped at ``backoff_max``; other 4xx never retry;
- an ``Idempotency-Key`` (uuid4) on every POST that creates, generated once per call and sent unchanged on
  each retry, so a retried update is counted once;
- model and prototype downloads cached by ETag (``If-None-Match`` -> 304 reuses the cached bytes) and
  checked against their sha256;
- tensors travel as safetensors (:mod:`mfcpl.wire.tensors`), never pickle.

This module imports neither torch nor FastAPI nor SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from client_sdk.cache import ETagCache, etag_digest, sha256_hex
from client_sdk.errors import (
    APIConnectionError,
    APITimeoutError,
    ContentIntegrityError,
    InvalidResponseError,
    MfcplError,
    error_from_response,
)
from mfcpl import __version__
from mfcpl.wire.constants import API_PREFIX, IDEMPOTENCY_HEADER, SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.schemas import (
    FINISHED_STATUSES,
    Client,
    ClientEnroll,
    ClientEnrolled,
    ClientProfile,
    Evaluation,
    EvaluationCreate,
    Event,
    Federation,
    FederationCreate,
    ModelVersion,
    PrototypeSet,
    Round,
    RoundMetrics,
    Task,
    UpdateReceipt,
    ViewerToken,
    ViewerTokenCreate,
    ViewerTokenCreated,
)
from mfcpl.wire.tensors import (
    PrototypeTable,
    TensorFormatError,
    Update,
    decode_model,
    decode_prototypes,
    encode_model,
    encode_update,
)

logger = logging.getLogger(__name__)

ENV_SERVER_URL = "MFCPL_SERVER_URL"
ENV_TOKEN = "MFCPL_TOKEN"
ENV_ADMIN_TOKEN = "MFCPL_ADMIN_TOKEN"
DEFAULT_SERVER_URL = "http://127.0.0.1:8080"  # where `mfcpl serve` listens by default
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

VersionRef = int | str  # a model version number or "latest"
M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------------------------------------------------
# Retry policy: small pure functions


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay(
    attempt: int, retry_after: str | None, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """The wait before retry number ``attempt + 1``: the server's Retry-After when given, else backoff; capped."""
    hinted = parse_retry_after(retry_after)
    if hinted is not None:
        return min(hinted, cap)
    return backoff_delay(attempt, base=base, cap=cap, rng=rng)


def _is_retryable_transport_error(exc: httpx.TransportError) -> bool:
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def _root_url(base_url: str) -> str:
    root = base_url.rstrip("/")
    if root.endswith(API_PREFIX):
        root = root[: -len(API_PREFIX)]
    return root


def _version_ref(version: VersionRef) -> str:
    if isinstance(version, bool) or not (isinstance(version, int) or version == "latest"):
        raise ValueError(f"a model version is an int >= 0 or 'latest', not {version!r}")
    if isinstance(version, int) and version < 0:
        raise ValueError(f"a model version is an int >= 0 or 'latest', not {version!r}")
    return str(version)


class ModelDownload(NamedTuple):
    """A downloaded model version: its metadata and its tensors (read-only numpy views over the body)."""

    version: ModelVersion
    weights: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------------------
# The client


class MfcplClient:
    """Synchronous client for the coordinator's REST API (``/v1``).

    ``base_url`` defaults to ``$MFCPL_SERVER_URL`` (then ``http://127.0.0.1:8080``, where ``mfcpl serve``
    listens) and ``token`` to
    ``$MFCPL_TOKEN`` (a client token), then ``$MFCPL_ADMIN_TOKEN`` (the operator token). ``max_retries`` is
    the number of retries after the first try. ``cache_dir`` keeps downloaded model and prototype bodies on
    disk across restarts. ``transport`` is passed to :class:`httpx.Client` (e.g. a configured
    ``httpx.HTTPTransport``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        cache_dir: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be >= 0")
        url = base_url or os.environ.get(ENV_SERVER_URL) or DEFAULT_SERVER_URL
        token = token or os.environ.get(ENV_TOKEN) or os.environ.get(ENV_ADMIN_TOKEN) or None
        self.base_url = _root_url(url)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.cache = ETagCache(cache_dir)
        default_headers = {"User-Agent": f"mfcpl-sdk/{__version__}", "Accept": "application/json"}
        if token:
            default_headers["Authorization"] = f"Bearer {token}"
        default_headers.update(headers or {})
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self.timeout, transport=transport, headers=default_headers
        )
        self._owns_http = True
        self._sleep: Callable[[float], None] = time.sleep
        self._rng = random.Random()
        self._init_resources()

    def _init_resources(self) -> None:
        self.federations = Federations(self)
        self.clients = Clients(self)
        self.tasks = Tasks(self)
        self.rounds = Rounds(self)
        self.models = Models(self)
        self.prototypes = Prototypes(self)
        self.updates = Updates(self)
        self.evaluations = Evaluations(self)
        self.metrics = Metrics(self)
        self.events = Events(self)
        self.viewer_tokens = ViewerTokens(self)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> MfcplClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
    ) -> MfcplClient:
        """A view of this client with other retry/timeout settings, sharing its connections and cache."""
        clone = object.__new__(MfcplClient)
        clone.__dict__.update(self.__dict__)
        clone._owns_http = False
        if timeout is not None:
            clone.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        if max_retries is not None:
            clone.max_retries = max_retries
        if backoff_base is not None:
            clone.backoff_base = backoff_base
        if backoff_max is not None:
            clone.backoff_max = backoff_max
        clone._init_resources()
        return clone

    # -- transport ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout: httpx.Timeout | None = None,
        stream: bool = False,
        retry_unsent_only: bool = False,
    ) -> httpx.Response:
        """Send one logical request with retries; return the final 2xx/3xx response or raise a typed error.

        ``path`` is relative to the server root (``/v1/...`` or ``/health``). With ``stream=True`` the
        caller must close the returned response. ``retry_unsent_only`` is for requests the server does not
        deduplicate: they are retried only when they cannot have been processed (no connection, or 429).
        """
        all_headers = dict(headers or {})
        if idempotency_key is not None:
            all_headers[IDEMPOTENCY_HEADER] = idempotency_key
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            all_headers.setdefault("Content-Type", "application/json")
        attempt = 0
        while True:
            request = self._http.build_request(
                method, path, content=content, headers=all_headers, params=params, timeout=timeout or self.timeout
            )
            retry_after: str | None = None
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not _is_retryable_transport_error(exc) or (retry_unsent_only and not unsent):
                    raise APIConnectionError(f"{method} {path}: {exc!r}", request=request) from exc
                if attempt >= self.max_retries:
                    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
                    raise kind(
                        f"{method} {path}: {type(exc).__name__}: {exc} (after {attempt + 1} tries)", request=request
                    ) from exc
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    response.read()
                response.close()
                retryable = response.status_code == 429 if retry_unsent_only else (
                    response.status_code in RETRYABLE_STATUSES)
                if not retryable or attempt >= self.max_retries:
                    raise error_from_response(response)
                retry_after = response.headers.get("Retry-After")
                reason = f"HTTP {response.status_code}"
            delay = retry_delay(attempt, retry_after, base=self.backoff_base, cap=self.backoff_max, rng=self._rng)
            logger.warning(
                "%s %s failed (%s); retry %d/%d in %.2fs", method, path, reason, attempt + 1, self.max_retries, delay
            )
            self._sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        return _parse(model, self.request(method, path, **kwargs))

    def _json_list(self, path: str, model: type[M], **kwargs: Any) -> list[M]:
        response = self.request("GET", path, **kwargs)
        try:
            return TypeAdapter(list[model]).validate_json(response.content)  # type: ignore[valid-type]
        except PydanticValidationError as exc:
            raise InvalidResponseError(f"GET {path}: response is not a list of {model.__name__}: {exc}") from exc

    def _create(self, path: str, model: type[M], *, idempotency_key: str | None, **kwargs: Any) -> M:
        """POST that creates: one Idempotency-Key for the whole logical call, reused by every retry.

        The coordinator deduplicates every creating POST by that key (the same key and body answer the
        stored result), so a create is retried like a read: a lost answer never creates a second resource.
        """
        key = idempotency_key or str(uuid.uuid4())
        return self._json("POST", path, model, idempotency_key=key, **kwargs)

    def download_blob(self, path: str, *, expected_sha256: str | None = None) -> bytes:
        """GET a content-addressed tensor body with ``If-None-Match``; 304 reuses the cached bytes.

        The body must hash to the sha256 its ETag names and to ``expected_sha256`` when given.
        """
        cached = self.cache.get(path)
        headers = {"Accept": SAFETENSORS_CONTENT_TYPE}
        if cached is not None:
            headers["If-None-Match"] = cached.etag
        elif expected_sha256 is not None and self.cache.blob(expected_sha256) is not None:
            headers["If-None-Match"] = f'"{expected_sha256}"'
        response = self.request("GET", path, headers=headers)
        if response.status_code == 304:
            body = cached.body if cached is not None else self.cache.blob(expected_sha256 or "")
            if body is None:
                raise InvalidResponseError(f"GET {path}: 304 Not Modified for a body this client does not hold")
            self.cache.not_modified += 1
            digest = sha256_hex(body)
            etag = response.headers.get("ETag") or (cached.etag if cached is not None else f'"{digest}"')
        elif response.status_code == 200:
            body = response.content
            digest = sha256_hex(body)
            etag = response.headers.get("ETag", "")
            self.cache.downloads += 1
        else:
            raise InvalidResponseError(f"GET {path}: unexpected status {response.status_code}")
        announced = etag_digest(etag)
        if announced is not None and announced != digest:
            raise ContentIntegrityError(f"GET {path}: body sha256 {digest} does not match its ETag {etag}")
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise ContentIntegrityError(f"GET {path}: body sha256 {digest}, expected {expected_sha256}")
        if etag and (response.status_code == 200 or cached is None):
            self.cache.put(path, etag, body)
        return body

    # -- misc -----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Liveness: the coordinator's health document (GET /healthz)."""
        return self._status_document(HEALTH_PATH)

    def ready(self) -> dict[str, Any]:
        """Readiness (GET /readyz): raises :class:`ServerError` (after retries) while not ready."""
        return self._status_document(READY_PATH)

    def _status_document(self, path: str) -> dict[str, Any]:
        response = self.request("GET", path)
        try:
            body = response.json()
        except ValueError:
            return {"status": response.text.strip() or "ok"}
        return body if isinstance(body, dict) else {"status": body}


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except PydanticValidationError as exc:
        raise InvalidResponseError(
            f"{response.request.method} {response.request.url.path}: response is not a {model.__name__}: {exc}"
        ) from exc


def _fed(fid: str) -> str:
    if not fid or "/" in fid:
        raise ValueError(f"bad federation id {fid!r}")
    return f"{API_PREFIX}/federations/{fid}"


def _body(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_unset=False)


# ---------------------------------------------------------------------------------------------------------
# Resources


class _Resource:
    def __init__(self, client: MfcplClient) -> None:
        self._client = client


class Federations(_Resource):
    def create(self, config: FederationCreate, *, idempotency_key: str | None = None) -> Federation:
        return self._client._create(
            f"{API_PREFIX}/federations", Federation, json_body=_body(config), idempotency_key=idempotency_key
        )

    def list(self) -> list[Federation]:
        return self._client._json_list(f"{API_PREFIX}/federations", Federation)

    def get(self, fid: str) -> Federation:
        return self._client._json("GET", _fed(fid), Federation)

    def pause(self, fid: str) -> Federation:
        return self._client._json("POST", f"{_fed(fid)}/pause", Federation)

    def resume(self, fid: str) -> Federation:
        return self._client._json("POST", f"{_fed(fid)}/resume", Federation)

    def cancel(self, fid: str) -> Federation:
        return self._client._json("POST", f"{_fed(fid)}/cancel", Federation)


class Clients(_Resource):
    def enroll(self, fid: str, name: str, *, idempotency_key: str | None = None) -> ClientEnrolled:
        """Enrol a node (admin). The returned ``token`` is shown once."""
        body = _body(ClientEnroll(name=name))
        return self._client._create(f"{_fed(fid)}/clients", ClientEnrolled, json_body=body,
                                    idempotency_key=idempotency_key)

    def list(self, fid: str) -> list[Client]:
        return self._client._json_list(f"{_fed(fid)}/clients", Client)

    def revoke(self, fid: str, client_id: str) -> Client:
        return self._client._json("DELETE", f"{_fed(fid)}/clients/{client_id}", Client)

    def me(self, fid: str) -> Client:
        return self._client._json("GET", f"{_fed(fid)}/clients/me", Client)

    def report_profile(self, fid: str, profile: ClientProfile) -> Client:
        return self._client._json("PUT", f"{_fed(fid)}/clients/me/profile", Client, json_body=_body(profile))


class Tasks(_Resource):
    def next(self, fid: str) -> Task:
        """What to do now (train / wait / done); also renews this client's lease."""
        return self._client._json("GET", f"{_fed(fid)}/tasks/next", Task)


class Rounds(_Resource):
    def list(self, fid: str) -> list[Round]:
        return self._client._json_list(f"{_fed(fid)}/rounds", Round)

    def get(self, fid: str, number: int) -> Round:
        return self._client._json("GET", f"{_fed(fid)}/rounds/{int(number)}", Round)


class Models(_Resource):
    def upload_initial(
        self, fid: str, weights: Mapping[str, np.ndarray], *, idempotency_key: str | None = None
    ) -> ModelVersion:
        """Upload model version 0 (admin) as safetensors."""
        return self._client._create(
            f"{_fed(fid)}/models",
            ModelVersion,
            content=encode_model(weights),
            headers={"Content-Type": SAFETENSORS_CONTENT_TYPE},
            idempotency_key=idempotency_key,
        )

    def list(self, fid: str) -> list[ModelVersion]:
        return self._client._json_list(f"{_fed(fid)}/models", ModelVersion)

    def get(self, fid: str, version: VersionRef = "latest") -> ModelVersion:
        return self._client._json("GET", f"{_fed(fid)}/models/{_version_ref(version)}", ModelVersion)

    def download_bytes(self, fid: str, version: int, *, expected_sha256: str | None = None) -> bytes:
        """The raw safetensors body of one model version (ETag-cached, sha256-checked)."""
        path = f"{_fed(fid)}/models/{_version_ref(version)}/weights"
        return self._client.download_blob(path, expected_sha256=expected_sha256)

    def download(
        self, fid: str, version: VersionRef = "latest", *, expected_sha256: str | None = None
    ) -> ModelDownload:
        """Metadata and weights of a version (``latest`` is resolved first, so both belong to one version)."""
        meta = self.get(fid, version)
        body = self.download_bytes(fid, meta.version, expected_sha256=expected_sha256)
        if sha256_hex(body) != meta.sha256.lower():
            raise ContentIntegrityError(f"model {fid} v{meta.version}: body does not hash to {meta.sha256}")
        try:
            return ModelDownload(meta, decode_model(body))
        except TensorFormatError as exc:
            raise InvalidResponseError(f"model {fid} v{meta.version}: {exc}") from exc


class Prototypes(_Resource):
    def get(self, fid: str, version: VersionRef = "latest") -> PrototypeSet:
        """The JSON summary (levels, coverage, counts) of the complete prototypes of a model version."""
        return self._client._json("GET", f"{_fed(fid)}/prototypes/{_version_ref(version)}", PrototypeSet)

    def download(
        self, fid: str, version: VersionRef = "latest", *, expected_sha256: str | None = None
    ) -> dict[str, PrototypeTable]:
        """The complete prototype tables per level (ETag-cached, sha256-checked)."""
        path = f"{_fed(fid)}/prototypes/{_version_ref(version)}/tensors"
        body = self._client.download_blob(path, expected_sha256=expected_sha256)
        try:
            return decode_prototypes(body)
        except TensorFormatError as exc:
            raise InvalidResponseError(f"prototypes {fid} v{version}: {exc}") from exc


class Updates(_Resource):
    def submit(
        self, fid: str, round_number: int, update: Update | bytes, *, idempotency_key: str | None = None
    ) -> UpdateReceipt:
        """Post this client's update for a round. Retries reuse one Idempotency-Key; ``replayed`` on the
        receipt tells that the coordinator had already accepted it."""
        content = update if isinstance(update, bytes | bytearray) else encode_update(update)
        return self._client._create(
            f"{_fed(fid)}/rounds/{int(round_number)}/updates",
            UpdateReceipt,
            content=bytes(content),
            headers={"Content-Type": SAFETENSORS_CONTENT_TYPE},
            idempotency_key=idempotency_key,
        )

    def list(self, fid: str, round_number: int) -> list[UpdateReceipt]:
        return self._client._json_list(f"{_fed(fid)}/rounds/{int(round_number)}/updates", UpdateReceipt)


class Evaluations(_Resource):
    def create(
        self, fid: str, round_number: int, evaluation: EvaluationCreate, *, idempotency_key: str | None = None
    ) -> Evaluation:
        """Record an evaluation of a round's model (admin), e.g. dev/test metrics."""
        return self._client._create(
            f"{_fed(fid)}/rounds/{int(round_number)}/evaluations",
            Evaluation,
            json_body=_body(evaluation),
            idempotency_key=idempotency_key,
        )


class ViewerTokens(_Resource):
    """Read-only viewer tokens (admin): mint one for a dashboard, list them, revoke one."""

    def create(self, label: str) -> ViewerTokenCreated:
        """The returned ``token`` is shown once."""
        return self._client._json("POST", f"{API_PREFIX}/viewer-tokens", ViewerTokenCreated,
                                  json_body=_body(ViewerTokenCreate(label=label)))

    def list(self) -> list[ViewerToken]:
        return self._client._json_list(f"{API_PREFIX}/viewer-tokens", ViewerToken)

    def revoke(self, token_id: str) -> ViewerToken:
        if not token_id or "/" in token_id:
            raise ValueError(f"bad viewer token id {token_id!r}")
        return self._client._json("DELETE", f"{API_PREFIX}/viewer-tokens/{token_id}", ViewerToken)


class Metrics(_Resource):
    def history(self, fid: str) -> list[RoundMetrics]:
        """Per-round metrics: train metrics reported by clients and evaluations."""
        return self._client._json_list(f"{_fed(fid)}/metrics", RoundMetrics)


# ---------------------------------------------------------------------------------------------------------
# Server-sent events


class ServerSentEvent(NamedTuple):
    id: str | None
    event: str | None
    data: str
    retry: int | None


def iter_sse(lines: Iterator[str]) -> Iterator[ServerSentEvent]:
    """Parse text/event-stream lines (WHATWG rules) into events; comments and empty events are skipped."""
    event_id: str | None = None
    event_type: str | None = None
    data: list[str] = []
    retry: int | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event_id, event_type, "\n".join(data), retry)
            event_type, data, retry = None, [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            event_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)


class EventStream:
    """Iterator of :class:`~mfcpl.wire.schemas.Event` from ``/events``; reconnects with ``Last-Event-ID``.

    Iteration ends when ``timeout`` seconds have passed (checked between lines, so an idle stream ends at
    most ``timeout`` after the last connection opened), after ``max_events`` events, when the server ends
    the stream and ``reconnect`` is False, or when the server ends it because the federation is finished
    (completed or cancelled: checked with one GET of the federation after the server closes a stream).
    ``last_event_id`` holds the id of the last event yielded.
    """

    def __init__(
        self,
        client: MfcplClient,
        fid: str,
        *,
        last_event_id: int | str | None = None,
        timeout: float | None = None,
        max_events: int | None = None,
        reconnect: bool = True,
    ) -> None:
        self._client = client
        self._fid = fid
        self._path = f"{_fed(fid)}/events"
        self.last_event_id = None if last_event_id is None else str(last_event_id)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._max_events = max_events
        self._reconnect = reconnect
        self._response: httpx.Response | None = None
        self._closed = False

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _federation_finished(self) -> bool:
        """The server sends every event of a finished federation and then ends the stream: nothing more will come.

        An error here says nothing about the stream (the next connection reports its own), so it counts as
        not finished."""
        try:
            return self._client.federations.get(self._fid).status in FINISHED_STATUSES
        except MfcplError:
            return False

    def __iter__(self) -> Iterator[Event]:
        yielded = 0
        failures = 0
        try:
            while not self._closed:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return
                headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
                if self.last_event_id is not None:
                    headers["Last-Event-ID"] = self.last_event_id
                base = self._client.timeout
                read = remaining if remaining is not None else base.read
                timeout = httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)
                try:
                    self._response = self._client.request(
                        "GET", self._path, headers=headers, timeout=timeout, stream=True
                    )
                    for sse in iter_sse(self._response.iter_lines()):
                        failures = 0
                        event = self._to_event(sse)
                        self.last_event_id = str(event.id)
                        yield event
                        yielded += 1
                        if self._max_events is not None and yielded >= self._max_events:
                            return
                        remaining = self._remaining()
                        if remaining is not None and remaining <= 0:
                            return
                except (httpx.TimeoutException, APITimeoutError):
                    if self._remaining() is not None and self._remaining() <= 0:  # type: ignore[operator]
                        return
                except (httpx.TransportError, APIConnectionError) as exc:
                    failures += 1
                    if not self._reconnect or failures > self._client.max_retries:
                        raise APIConnectionError(f"GET {self._path}: stream lost: {exc}") from exc
                    self._client._sleep(
                        backoff_delay(failures - 1, base=self._client.backoff_base, cap=self._client.backoff_max)
                    )
                finally:
                    if self._response is not None:
                        self._response.close()
                        self._response = None
                if not self._reconnect or self._federation_finished():
                    return
                # the server ended the stream (or it timed out idle): reconnect after a short pause
                pause = self._client.backoff_base
                remaining = self._remaining()
                self._client._sleep(pause if remaining is None else max(0.0, min(pause, remaining)))
        finally:
            self._closed = True

    def _to_event(self, sse: ServerSentEvent) -> Event:
        try:
            payload = json.loads(sse.data)
            if isinstance(payload, dict):
                if "id" not in payload and sse.id is not None:
                    payload["id"] = int(sse.id)
                if "type" not in payload and sse.event is not None:
                    payload["type"] = sse.event
            return Event.model_validate(payload)
        except (ValueError, PydanticValidationError) as exc:
            raise InvalidResponseError(f"GET {self._path}: event {sse.id} is not an Event: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Events(_Resource):
    def stream(
        self,
        fid: str,
        *,
        last_event_id: int | str | None = None,
        timeout: float | None = None,
        max_events: int | None = None,
        reconnect: bool = True,
    ) -> EventStream:
        """Watch a federation's events (round opened/closed/failed, update received, status)."""
        return EventStream(
            self._client, fid, last_event_id=last_event_id, timeout=timeout, max_events=max_events,
            reconnect=reconnect,
        )


__all__ = [
    "DEFAULT_SERVER_URL",
    "ENV_ADMIN_TOKEN",
    "ENV_SERVER_URL",
    "ENV_TOKEN",
    "EventStream",
    "MfcplClient",
    "MfcplError",
    "ModelDownload",
    "ServerSentEvent",
    "backoff_delay",
    "iter_sse",
    "parse_retry_after",
    "retry_delay",
]
