"""The simulated API: configuration, routing, authentication, faults, handlers."""

from __future__ import annotations

import base64
import binascii
import hmac
import random
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from reconciler.simulator_store import (
    DatasetStore,
    Observed,
    PreconditionFailed,
    Tally,
)

API_PREFIX = "/api/management/v2"
ADMIN_PREFIX = "/__simulator__"
EDIT_DATASET = "edit_dataset"
PUBLISH_DATASET = "publish_dataset"
DEFAULT_RIGHTS = frozenset({EDIT_DATASET, PUBLISH_DATASET})

_DEFAULT_MESSAGES = {
    "error": "The last action failed.",
    "limit_reached": "The dataset reached the record limit of the licence.",
}


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


# --- API: routing, authentication, faults and handlers ----------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass(frozen=True)
class Response:
    status: int
    body: object
    headers: tuple[tuple[str, str], ...] = ()
    # Close the connection without sending anything, after acting.
    drop: bool = False


class _HttpError(Exception):
    def __init__(self, response: Response) -> None:
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
    return _HttpError(Response(status, body, headers))


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


def status_body(observed: Observed, expand_user: bool) -> dict[str, object]:
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


def _listing_item(observed: Observed, with_status: bool) -> dict[str, object]:
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


class Api:
    """The simulated API: turns parsed requests into responses."""

    def __init__(
        self, store: DatasetStore, config: SimulatorConfig, tally: Tally
    ) -> None:
        self._store = store
        self._config = config
        self._tally = tally
        self._random = random.Random(config.seed)
        self._random_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if self._config.latency:
            time.sleep(self._config.latency)
        try:
            response = self._route(request)
        except _HttpError as error:
            response = error.response
        self._tally.count_response("dropped" if response.drop else str(response.status))
        return response

    def _route(self, request: Request) -> Response:
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

    def _authenticate(self, request: Request) -> _Caller:
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

    def _list(self, query: dict[str, list[str]]) -> Response:
        rows = min(_positive_int(query, "rows", 10), self._config.max_rows)
        page = _positive_int(query, "page", 1)
        items = [
            _listing_item(observed, self._config.listing_status)
            for observed in self._store.page(rows, page)
        ]
        if self._config.bare_listing:
            return Response(200, items)
        nhits = len(self._store)
        body = {"datasets": items, "rows": rows, "page": page, "nhits": nhits}
        return Response(200, body)

    def _status(self, uid: str, expand_user: bool) -> Response:
        try:
            observed = self._store.observe(uid)
        except KeyError:
            raise _error("dataset_not_found", dataset_uid=uid) from None
        return Response(200, status_body(observed, expand_user))

    def _act(self, uid: str, verb: str, caller: _Caller) -> Response:
        try:
            self._store.start_action(uid, verb, caller.username)
        except KeyError:
            raise _error("dataset_not_found", dataset_uid=uid) from None
        except PreconditionFailed as failure:
            raise _error(
                "precondition",
                current_status=failure.current_status,
                authorized_origin_status=", ".join(failure.authorized),
            ) from None

        with self._random_lock:
            job_id = f"{self._random.getrandbits(160):040x}"
        self._tally.add_job(job_id, uid, verb)
        drop = self._chance(self._config.drop_after_write_rate)
        return Response(200, {"job_id": job_id}, drop=drop)

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


def admin_response(method: str, path: str, tally: Tally) -> Response:
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
    return Response(200, tally.snapshot())
