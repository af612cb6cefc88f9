"""A local simulator of the Management API v2 publication endpoints.

It serves the dataset listing, the status endpoint and the publish, unpublish and
abort_processing actions over real HTTP on 127.0.0.1, for the quick-start demo,
integration tests and benchmarks. Status transitions follow a monotonic clock and
are computed when a request reads them, so no background thread drives them. Fault
knobs add latency, 503 and 429 responses and dropped connections, and a tally counts
requests by route.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import random
import re
import socket
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from reconciler.errors import ConfigError

if TYPE_CHECKING:
    import click

logger = logging.getLogger(__name__)

API_PREFIX = "/api/management/v2"
ADMIN_PREFIX = "/__simulator__"
EDIT_DATASET = "edit_dataset"
PUBLISH_DATASET = "publish_dataset"
DEFAULT_RIGHTS = frozenset({EDIT_DATASET, PUBLISH_DATASET})
# Username that ?expand=user reports for a seeded status.
DEFAULT_DATASET_USER = "portal-admin"

SETTLED_STATUSES = ("idle", "error", "limit_reached")
ABORTABLE_STATUSES = ("queued", "processing")
SEEDED_BUSY_STATUSES = ("queued", "processing", "deleting")
SEED_STATUSES = SETTLED_STATUSES + SEEDED_BUSY_STATUSES

_DEFAULT_MESSAGES = {
    "error": "The last action failed.",
    "limit_reached": "The dataset reached the record limit of the licence.",
}


@dataclass(frozen=True)
class SimulatedDataset:
    """A dataset in the state the simulator starts it in."""

    uid: str
    dataset_id: str
    published: bool
    status: str = "idle"
    message: str | None = None
    # Seconds a dataset seeded as queued, processing or deleting stays busy, or
    # None for two steps.
    busy_seconds: float | None = None
    title: str | None = None
    # Username reported by ?expand=user until an action replaces it.
    user: str = DEFAULT_DATASET_USER

    def __post_init__(self) -> None:
        if self.status not in SEED_STATUSES:
            raise ValueError(
                f"Invalid status {self.status!r} for {self.uid!r}: expected one of "
                + ", ".join(SEED_STATUSES)
            )


@dataclass(frozen=True)
class SimulatorConfig:
    """Accepted credentials, status timing and fault knobs of a simulator."""

    # API key to rights, for example {"key": DEFAULT_RIGHTS}.
    api_keys: dict[str, frozenset[str]] = field(default_factory=dict)
    # Username to (password, rights), for HTTP Basic authentication.
    users: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    # Username reported by ?expand=user for actions requested with an API key.
    api_key_owner: str = "api-key-owner"
    # Duration of each status phase, in seconds.
    step_seconds: float = 0.2
    # Delay added to every API request, in seconds.
    latency: float = 0.0
    # Fractions (0 to 1) of API requests that get a 503 or a 429 without acting.
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    # Retry-After value of 429 responses, in seconds.
    retry_after: int = 1
    # Fraction of accepted actions whose connection closes without a response.
    drop_after_write_rate: float = 0.0
    # Maximum page size of the listing. Larger `rows` values are capped to it.
    max_rows: int = 100
    listing_status: bool = True
    bare_listing: bool = False
    # Seed of the generator behind faults and job ids. Runs repeat exactly only
    # when requests arrive one at a time, because threads draw in arrival order.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "throttle_rate", "drop_after_write_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.step_seconds <= 0:
            raise ValueError("step_seconds must be greater than 0")
        if self.latency < 0 or self.retry_after < 0:
            raise ValueError("latency and retry_after must not be negative")
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")


# --- Dataset store: status transitions over time ---------------------------------


@dataclass
class _Action:
    """A running publish, unpublish, abort or seeded busy status."""

    # Status names with the monotonic time each begins, in order.
    phases: list[tuple[str, float]]
    ends_at: float
    published_before: bool
    published_after: bool
    user: str

    def current_phase(self, now: float) -> tuple[str, float]:
        for name, started_at in reversed(self.phases):
            if now >= started_at:
                return name, started_at
        return self.phases[0]


@dataclass
class _Entry:
    """The mutable state of one dataset, with its last settled status and flag."""

    dataset: SimulatedDataset
    published: bool
    status: str
    message: str | None
    since: float
    user: str
    action: _Action | None = None


@dataclass(frozen=True)
class _Observed:
    """The status of a dataset at one moment, as the API reports it."""

    dataset: SimulatedDataset
    name: str
    since: str
    published: bool
    message: str | None
    user: str


class _PreconditionFailed(Exception):
    def __init__(self, current_status: str, authorized: tuple[str, ...]) -> None:
        super().__init__(current_status)
        self.current_status = current_status
        self.authorized = authorized


class _DatasetStore:
    """Datasets by uid, guarded by one lock because handler threads share them."""

    def __init__(
        self,
        datasets: Iterable[SimulatedDataset],
        step_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._lock = threading.Lock()
        self._step = step_seconds
        self._clock = clock
        self._origin = clock()
        self._wall_origin = datetime.now(timezone.utc)
        self._entries: dict[str, _Entry] = {}
        for dataset in datasets:
            if dataset.uid in self._entries:
                raise ValueError(f"Duplicate dataset uid {dataset.uid!r}")
            self._entries[dataset.uid] = self._seed_entry(dataset)
        self._uids = sorted(self._entries)

    def __len__(self) -> int:
        return len(self._uids)

    def observe(self, uid: str) -> _Observed:
        """Return the current status of a dataset, or raise KeyError if unknown."""
        with self._lock:
            return self._observe(self._entries[uid], self._clock())

    def page(self, rows: int, page: int) -> list[_Observed]:
        offset = (page - 1) * rows
        with self._lock:
            now = self._clock()
            uids = self._uids[offset : offset + rows]
            return [self._observe(self._entries[uid], now) for uid in uids]

    def start_action(self, uid: str, verb: str, user: str) -> None:
        """Start publish, unpublish or abort_processing, checking the precondition."""
        with self._lock:
            entry = self._entries[uid]
            now = self._clock()
            current = self._observe(entry, now).name
            authorized = (
                ABORTABLE_STATUSES if verb == "abort_processing" else SETTLED_STATUSES
            )
            if current not in authorized:
                raise _PreconditionFailed(current, authorized)
            entry.action = self._new_action(entry, verb, user, now)

    def _seed_entry(self, dataset: SimulatedDataset) -> _Entry:
        entry = _Entry(
            dataset=dataset,
            published=dataset.published,
            status=dataset.status,
            message=dataset.message,
            since=self._origin,
            user=dataset.user,
        )
        if dataset.status in SEEDED_BUSY_STATUSES:
            busy_seconds = dataset.busy_seconds
            if busy_seconds is None:
                busy_seconds = 2 * self._step
            entry.action = _Action(
                phases=[(dataset.status, self._origin)],
                ends_at=self._origin + busy_seconds,
                published_before=dataset.published,
                published_after=dataset.status != "deleting",
                user=dataset.user,
            )
        return entry

    def _new_action(self, entry: _Entry, verb: str, user: str, now: float) -> _Action:
        if verb == "abort_processing":
            # The dataset keeps the published flag it had before the aborted action.
            running = entry.action
            published = running.published_before if running else entry.published
            return _Action(
                phases=[("aborting_processing", now)],
                ends_at=now + self._step,
                published_before=published,
                published_after=published,
                user=user,
            )
        busy_status = "processing" if verb == "publish" else "deleting"
        return _Action(
            phases=[("queued", now), (busy_status, now + self._step)],
            ends_at=now + 2 * self._step,
            published_before=entry.published,
            published_after=verb == "publish",
            user=user,
        )

    def _observe(self, entry: _Entry, now: float) -> _Observed:
        self._settle_finished_action(entry, now)
        action = entry.action
        if action is None:
            return _Observed(
                entry.dataset,
                entry.status,
                self._isoformat(entry.since),
                entry.published,
                entry.message,
                entry.user,
            )
        name, started_at = action.current_phase(now)
        return _Observed(
            entry.dataset,
            name,
            self._isoformat(started_at),
            action.published_before,
            None,
            action.user,
        )

    def _settle_finished_action(self, entry: _Entry, now: float) -> None:
        action = entry.action
        if action is None or now < action.ends_at:
            return
        entry.status = "idle"
        entry.published = action.published_after
        entry.message = None
        entry.since = action.ends_at
        entry.user = action.user
        entry.action = None

    def _isoformat(self, moment: float) -> str:
        wall = self._wall_origin + timedelta(seconds=moment - self._origin)
        return wall.isoformat(timespec="milliseconds")


# --- Request tally ---------------------------------------------------------------


class _Tally:
    """Counts of API requests, response codes and issued jobs, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._responses: Counter[str] = Counter()
        self._jobs: list[dict[str, str]] = []

    def count_request(self, route: str) -> None:
        with self._lock:
            self._requests[route] += 1

    def count_response(self, outcome: str) -> None:
        with self._lock:
            self._responses[outcome] += 1

    def add_job(self, job_id: str, uid: str, action: str) -> None:
        with self._lock:
            self._jobs.append({"job_id": job_id, "dataset_uid": uid, "action": action})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._requests.values()),
                "requests": dict(sorted(self._requests.items())),
                "responses": dict(sorted(self._responses.items())),
                "jobs": [dict(job) for job in self._jobs],
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._responses.clear()
            self._jobs.clear()


# --- API: routing, authentication, faults and handlers ----------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass(frozen=True)
class _Response:
    status: int
    body: object
    headers: tuple[tuple[str, str], ...] = ()
    # Close the connection without sending anything, after acting.
    drop: bool = False


class _HttpError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class _Route:
    template: str
    method: str
    verb: str
    uid: str | None


@dataclass(frozen=True)
class _Caller:
    username: str
    rights: frozenset[str]


_DATASET_ROUTE = re.compile(
    r"/datasets/(?P<uid>[^/]+)/(?P<verb>status|publish|unpublish|abort_processing)"
)


# Status, error key and raw message of each error the simulator returns. The
# platform documents the body shape and the precondition error key. The other
# keys are guesses.
_ERRORS: dict[str, tuple[int, str, str]] = {
    "invalid_parameter": (
        400,
        "InvalidManagementAPIRequestException",
        "Invalid value '{value}' for parameter '{parameter}': expected an integer "
        "of 1 or more",
    ),
    "precondition": (
        400,
        "InvalidDatasetStatusPreconditionException",
        "Invalid precondition, dataset status is '{current_status}' "
        "but must be one of '{authorized_origin_status}'",
    ),
    "missing_credentials": (
        401,
        "AuthenticationRequiredException",
        "Authentication required: send an API key or Basic credentials.",
    ),
    "invalid_credentials": (
        401,
        "InvalidCredentialsException",
        "Invalid credentials: the API key or the username and password were "
        "not accepted.",
    ),
    "missing_permission": (
        403,
        "PermissionDeniedException",
        "User '{username}' lacks the '{permission}' permission that this request "
        "requires.",
    ),
    "dataset_not_found": (
        404,
        "DatasetNotFoundException",
        "Dataset '{dataset_uid}' not found",
    ),
    "no_route": (404, "ResourceNotFoundException", "No resource at '{path}'"),
    "method_not_allowed": (
        405,
        "MethodNotAllowedException",
        "Method '{method}' is not allowed on '{path}'. Allowed: {allowed}.",
    ),
    "throttled": (
        429,
        "TooManyRequestsException",
        "Too many requests. Retry after {retry_after} seconds.",
    ),
    "unavailable": (
        503,
        "ServiceUnavailableException",
        "The service is temporarily unavailable. Retry later.",
    ),
}


def _error(
    kind: str, headers: tuple[tuple[str, str], ...] = (), **params: str
) -> _HttpError:
    """Build an error of one of the kinds in _ERRORS, in the platform's shape."""
    status, error_key, raw_message = _ERRORS[kind]
    body = {
        "status_code": status,
        "error_key": error_key,
        "message": raw_message.format(**params),
        "raw_message": raw_message,
        "raw_params": params,
    }
    return _HttpError(_Response(status, body, headers))


def _match_route(path: str) -> _Route | None:
    if not path.startswith(API_PREFIX + "/"):
        return None
    rest = path[len(API_PREFIX) :].rstrip("/")
    if rest == "/datasets":
        return _Route("/datasets", "GET", "list", None)
    match = _DATASET_ROUTE.fullmatch(rest)
    if match is None:
        return None
    verb = match["verb"]
    method = "GET" if verb == "status" else "PUT"
    return _Route(f"/datasets/{{uid}}/{verb}", method, verb, unquote(match["uid"]))


def _status_body(observed: _Observed, expand_user: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "published": observed.published,
        "name": observed.name,
        "since": observed.since,
    }
    if observed.name in _DEFAULT_MESSAGES:
        message = observed.message or _DEFAULT_MESSAGES[observed.name]
        body.update(message=message, raw_message=message, raw_params={})
    if expand_user:
        body["user"] = {"username": observed.user}
    return body


def _listing_item(observed: _Observed, with_status: bool) -> dict[str, object]:
    dataset = observed.dataset
    title = dataset.title or dataset.dataset_id.replace("-", " ").capitalize()
    item: dict[str, object] = {
        "dataset_uid": dataset.uid,
        "dataset_id": dataset.dataset_id,
        "visibility": "domain",
        "last_modified": observed.since,
        "metas": {
            "default": {"title": title},
            "publishing": {"published": observed.published},
        },
    }
    if with_status:
        item["status"] = {"name": observed.name, "since": observed.since}
    return item


def _expands(query: dict[str, list[str]], relation: str) -> bool:
    return relation in ",".join(query.get("expand", [])).split(",")


def _positive_int(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    text = values[0]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise _error("invalid_parameter", value=text, parameter=name)
    return value


class _Api:
    """The simulated API: turns parsed requests into responses."""

    def __init__(
        self, store: _DatasetStore, config: SimulatorConfig, tally: _Tally
    ) -> None:
        self._store = store
        self._config = config
        self._tally = tally
        self._random = random.Random(config.seed)
        self._random_lock = threading.Lock()

    def handle(self, request: _Request) -> _Response:
        if self._config.latency:
            time.sleep(self._config.latency)
        try:
            response = self._route(request)
        except _HttpError as error:
            response = error.response
        self._tally.count_response("dropped" if response.drop else str(response.status))
        return response

    def _route(self, request: _Request) -> _Response:
        route = _match_route(request.path)
        if route is None:
            self._tally.count_request(f"{request.method} <unmatched>")
            raise _error("no_route", path=request.path)
        self._tally.count_request(f"{request.method} {route.template}")
        if request.method != route.method:
            raise _method_not_allowed(request.method, request.path, route.method)

        self._inject_fault()
        caller = self._authenticate(request)
        if route.uid is None:
            self._require(caller, EDIT_DATASET)
            return self._list(request.query)
        self._require(caller, PUBLISH_DATASET)
        if route.verb == "status":
            return self._status(route.uid, _expands(request.query, "user"))
        return self._act(route.uid, route.verb, caller)

    def _inject_fault(self) -> None:
        if self._chance(self._config.error_rate):
            raise _error("unavailable")
        if self._chance(self._config.throttle_rate):
            retry_after = str(self._config.retry_after)
            headers = (("Retry-After", retry_after),)
            raise _error("throttled", headers, retry_after=retry_after)

    def _authenticate(self, request: _Request) -> _Caller:
        if request.authorization:
            caller = self._caller_from_header(request.authorization)
        elif request.query.get("apikey"):
            caller = self._caller_from_key(request.query["apikey"][0])
        else:
            raise _error("missing_credentials")
        if caller is None:
            raise _error("invalid_credentials")
        return caller

    def _caller_from_header(self, authorization: str) -> _Caller | None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "apikey":
            return self._caller_from_key(credentials.strip())
        if scheme.lower() == "basic":
            return self._caller_from_basic(credentials.strip())
        return None

    def _caller_from_key(self, key: str) -> _Caller | None:
        rights = self._config.api_keys.get(key)
        if rights is None:
            return None
        return _Caller(self._config.api_key_owner, rights)

    def _caller_from_basic(self, credentials: str) -> _Caller | None:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
        account = self._config.users.get(username)
        if account is None or not hmac.compare_digest(account[0], password):
            return None
        return _Caller(username, account[1])

    def _require(self, caller: _Caller, right: str) -> None:
        if right not in caller.rights:
            raise _error(
                "missing_permission", username=caller.username, permission=right
            )

    def _list(self, query: dict[str, list[str]]) -> _Response:
        rows = min(_positive_int(query, "rows", 10), self._config.max_rows)
        page = _positive_int(query, "page", 1)
        items = [
            _listing_item(observed, self._config.listing_status)
            for observed in self._store.page(rows, page)
        ]
        if self._config.bare_listing:
            return _Response(200, items)
        nhits = len(self._store)
        body = {"datasets": items, "rows": rows, "page": page, "nhits": nhits}
        return _Response(200, body)

    def _status(self, uid: str, expand_user: bool) -> _Response:
        try:
            observed = self._store.observe(uid)
        except KeyError:
            raise _error("dataset_not_found", dataset_uid=uid) from None
        return _Response(200, _status_body(observed, expand_user))

    def _act(self, uid: str, verb: str, caller: _Caller) -> _Response:
        try:
            self._store.start_action(uid, verb, caller.username)
        except KeyError:
            raise _error("dataset_not_found", dataset_uid=uid) from None
        except _PreconditionFailed as failure:
            raise _error(
                "precondition",
                current_status=failure.current_status,
                authorized_origin_status=", ".join(failure.authorized),
            ) from None

        with self._random_lock:
            job_id = f"{self._random.getrandbits(160):040x}"
        self._tally.add_job(job_id, uid, verb)
        drop = self._chance(self._config.drop_after_write_rate)
        return _Response(200, {"job_id": job_id}, drop=drop)

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._random_lock:
            return self._random.random() < rate


def _method_not_allowed(method: str, path: str, allowed: str) -> _HttpError:
    headers = (("Allow", allowed),)
    return _error(
        "method_not_allowed", headers, method=method, path=path, allowed=allowed
    )


def _admin_response(method: str, path: str, tally: _Tally) -> _Response:
    """Serve the unauthenticated, uncounted routes that tests and benchmarks use."""
    routes = {"/stats": "GET", "/reset": "POST"}
    name = path[len(ADMIN_PREFIX) :].rstrip("/")
    try:
        if name not in routes:
            raise _error("no_route", path=path)
        if method != routes[name]:
            raise _method_not_allowed(method, path, routes[name])
    except _HttpError as error:
        return error.response
    if name == "/reset":
        tally.reset()
    return _Response(200, tally.snapshot())


# --- HTTP server -----------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its open keep-alive connections."""

    # With the default backlog of 5, a burst of 20 clients waited about a second
    # for SYN retransmissions on Linux.
    request_queue_size = 128

    def __init__(self, port: int, api: _Api, tally: _Tally) -> None:
        super().__init__(("127.0.0.1", port), _RequestHandler)
        self.api = api
        self.tally = tally
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down open connections so idle keep-alive threads end at once."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default handler prints a traceback to stderr for each failure,
        # including clients that hang up, which would clutter the demo's output.
        logger.debug("Request from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ods-simulator"
    # Seconds an idle keep-alive connection waits for its next request.
    timeout = 30
    # Headers and body go out in separate writes, which Nagle's algorithm and
    # delayed ACKs would hold back about 40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._server().track(self.connection)

    def finish(self) -> None:
        self._server().untrack(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def _dispatch(self) -> None:
        self._discard_body()
        url = urlsplit(self.path)
        server = self._server()
        if url.path.startswith(ADMIN_PREFIX + "/"):
            response = _admin_response(self.command, url.path, server.tally)
        else:
            authorization = self.headers.get("Authorization")
            request = _Request(
                self.command, url.path, parse_qs(url.query), authorization
            )
            response = server.api.handle(request)
        if response.drop:
            logger.debug("Closed the connection without a response to %s", self.path)
            self.close_connection = True
            return
        self._send(response)

    def _discard_body(self) -> None:
        # Reading the whole body keeps the next request on this connection aligned.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
        elif length > 0:
            self.rfile.read(length)

    def _send(self, response: _Response) -> None:
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


# --- Public entry point ------------------------------------------------------------


class Simulator:
    """A Management API v2 simulator serving a set of datasets on 127.0.0.1."""

    def __init__(
        self,
        datasets: Iterable[SimulatedDataset],
        config: SimulatorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._tally = _Tally()
        self._store = _DatasetStore(datasets, config.step_seconds, clock)
        self._api = _Api(self._store, config, self._tally)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def url(self) -> str:
        """Root URL of the running server, such as http://127.0.0.1:8765."""
        if self._server is None:
            raise RuntimeError("The simulator is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        """Base URL of the simulated Management API v2."""
        return self.url + API_PREFIX

    def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:port, or on a free port when port is 0."""
        if self._server is not None:
            raise RuntimeError(f"The simulator is already running at {self.url}")
        self._server = _Server(port, self._api, self._tally)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="ods-simulator",
            daemon=True,
        )
        self._thread.start()
        logger.info("Simulator listening on %s", self.api_url)

    def stop(self) -> None:
        """Stop serving and close open connections, if the server is running."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
        logger.info("Simulator stopped")

    def snapshot(self, uid: str) -> dict[str, object]:
        """Return the status body of a dataset as GET .../status would."""
        return _status_body(self._store.observe(uid), expand_user=False)

    def stats(self) -> dict[str, Any]:
        """Return the tally: total, requests by route, responses by code, jobs."""
        return self._tally.snapshot()

    def reset_stats(self) -> None:
        """Clear the tally but keep the dataset states."""
        self._tally.reset()


# --- Seed files ------------------------------------------------------------------
#
# A seed file lists the datasets a simulator starts with, under a top-level
# `datasets:` key, in YAML (.yaml, .yml) or JSON (.json). Each entry has `uid`,
# `dataset_id` and `published`, and optionally `status` (idle by default),
# `message` (error and limit_reached only), `busy_seconds` (queued, processing and
# deleting only), `title` and `user`.


_UID_PATTERN = re.compile(r"da_[a-z0-9]+")
_REQUIRED_FIELDS = ("uid", "dataset_id", "published")


def _is_uid(value: object) -> bool:
    return isinstance(value, str) and _UID_PATTERN.fullmatch(value) is not None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_dataset_id(value: object) -> bool:
    # An unquoted numeric dataset_id such as 100001 parses as a YAML integer.
    is_integer = isinstance(value, int) and not isinstance(value, bool)
    return is_integer or _is_text(value)


def _is_seconds(value: object) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and cast(float, value) >= 0


# Each field's check and the expectation an error message states.
_FIELD_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "uid": (_is_uid, "'da_' followed by lowercase letters or digits"),
    "dataset_id": (_is_dataset_id, "a non-empty string"),
    "published": (lambda value: isinstance(value, bool), "true or false"),
    "status": (
        lambda value: value in SEED_STATUSES,
        "one of " + ", ".join(SEED_STATUSES),
    ),
    "message": (_is_text, "a non-empty string"),
    "busy_seconds": (_is_seconds, "a number of seconds, 0 or more"),
    "title": (_is_text, "a non-empty string"),
    "user": (_is_text, "a non-empty string"),
}


def load_seed(path: str | Path) -> list[SimulatedDataset]:
    """Read the datasets of a YAML or JSON seed file, or raise ConfigError."""
    path = Path(path)
    entries = _read_entries(path)

    datasets: list[SimulatedDataset] = []
    problems: list[str] = []
    seen_uids: set[str] = set()
    for index, entry in enumerate(entries):
        uid = entry.get("uid") if isinstance(entry, dict) else None
        where = f"{path}: datasets[{index}]" + (f" ({uid})" if uid else "")
        entry_problems = _entry_problems(entry, seen_uids)
        problems.extend(f"{where}: {problem}" for problem in entry_problems)
        if not entry_problems:
            datasets.append(_dataset_from_entry(cast(dict[str, Any], entry)))
            seen_uids.add(cast(str, uid))
    if problems:
        raise ConfigError("\n".join(problems))
    return datasets


def _read_entries(path: Path) -> list[object]:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(
            f"{path}: unsupported seed file extension {suffix!r}: use .yaml, .yml "
            "or .json"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: failed to read seed file: {error}") from error
    try:
        document = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: invalid {suffix[1:].upper()}: {error}") from error

    entries = document.get("datasets") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a top-level 'datasets' list")
    return entries


def _entry_problems(entry: object, seen_uids: set[str]) -> list[str]:
    if not isinstance(entry, dict):
        return ["expected a mapping with uid, dataset_id and published"]
    fields = {key: value for key, value in entry.items() if value is not None}
    problems = [
        f"missing field {name!r}" for name in _REQUIRED_FIELDS if name not in fields
    ]
    for name, value in fields.items():
        if name not in _FIELD_RULES:
            problems.append(
                f"unknown field {name!r}: expected one of {', '.join(_FIELD_RULES)}"
            )
            continue
        check, expected = _FIELD_RULES[name]
        if not check(value):
            problems.append(f"invalid {name!r}: expected {expected}, got {value!r}")
    if not problems:
        problems.extend(_consistency_problems(fields, seen_uids))
    return problems


def _consistency_problems(fields: dict[str, Any], seen_uids: set[str]) -> list[str]:
    problems = []
    status = fields.get("status", "idle")
    if fields["uid"] in seen_uids:
        problems.append(f"duplicate uid {fields['uid']!r}")
    if "message" in fields and status not in ("error", "limit_reached"):
        problems.append(
            f"'message' applies only to status error or limit_reached, not {status!r}"
        )
    if "busy_seconds" in fields and status not in SEEDED_BUSY_STATUSES:
        problems.append(
            f"'busy_seconds' applies only to status queued, processing or deleting, "
            f"not {status!r}"
        )
    return problems


def _dataset_from_entry(entry: dict[str, Any]) -> SimulatedDataset:
    busy_seconds = entry.get("busy_seconds")
    return SimulatedDataset(
        uid=entry["uid"],
        dataset_id=str(entry["dataset_id"]),
        published=entry["published"],
        status=entry.get("status") or "idle",
        message=entry.get("message"),
        busy_seconds=None if busy_seconds is None else float(busy_seconds),
        title=entry.get("title"),
        user=entry.get("user") or DEFAULT_DATASET_USER,
    )


def generate_datasets(
    n: int, published_fraction: float = 0.5, seed: int = 0
) -> list[SimulatedDataset]:
    """Generate n idle datasets with random uids, the same for the same seed."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if not 0.0 <= published_fraction <= 1.0:
        raise ValueError(
            f"published_fraction must be between 0 and 1, got {published_fraction}"
        )
    generator = random.Random(seed)
    alphabet = string.digits + string.ascii_lowercase
    uids: list[str] = []
    used_uids: set[str] = set()
    while len(uids) < n:
        uid = "da_" + "".join(generator.choices(alphabet, k=6))
        if uid not in used_uids:
            used_uids.add(uid)
            uids.append(uid)
    return [
        SimulatedDataset(
            uid=uid,
            dataset_id=f"generated-{number:06d}",
            published=generator.random() < published_fraction,
            title=f"Generated dataset {number}",
        )
        for number, uid in enumerate(uids, start=1)
    ]


def __getattr__(name: str) -> click.Command:
    # simulator_cli imports this module, so the command is loaded on first access.
    if name == "simulator_command":
        from reconciler.simulator_cli import simulator_command

        return simulator_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
