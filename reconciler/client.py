"""HTTP client for the dataset endpoints of the Opendatasoft Management API v2."""

from __future__ import annotations

import base64
import ipaddress
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from reconciler import __version__
from reconciler.errors import ApiError, ConfigError
from reconciler.throttle import Throttle

log = logging.getLogger(__name__)

API_PATH = "/api/management/v2"
PAGE_SIZE = 100
DEFAULT_TIMEOUT = 30.0
GET_ATTEMPTS = 5
THROTTLED_ATTEMPTS = 30
MIN_MASKED = 6
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# The right each kind of request needs, quoted in 403 messages.
LIST_RIGHT = "edit_dataset"
PUBLISH_RIGHT = "publish_dataset"


@dataclass(frozen=True)
class Credentials:
    """An API key or a user name and password, and the variables they came from."""

    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        """Read ODS_API_KEY, or ODS_USERNAME and ODS_PASSWORD.

        Whitespace around a value, such as the newline a pasted secret often
        ends with, is removed; a control character left inside is an error.
        """
        api_key = _secret_from(environ, "ODS_API_KEY")
        username = _secret_from(environ, "ODS_USERNAME")
        password = _secret_from(environ, "ODS_PASSWORD")
        if api_key:
            return cls(api_key=api_key)
        if username and password:
            return cls(username=username, password=password)
        if username or password:
            raise ConfigError(
                "ODS_USERNAME and ODS_PASSWORD must be set together; "
                "or set ODS_API_KEY instead"
            )
        raise ConfigError(
            "no credentials: set ODS_API_KEY (recommended), "
            "or ODS_USERNAME and ODS_PASSWORD"
        )

    @property
    def source(self) -> str:
        """Name the environment variables the credentials came from."""
        if self.api_key:
            return "the API key in ODS_API_KEY"
        return f"the account in ODS_USERNAME ({self.username})"

    def secrets(self) -> tuple[str, ...]:
        """Return the values that must never be shown, as sent and as given."""
        values = [self.api_key, self.password]
        if self.username and self.password:
            pair = f"{self.username}:{self.password}".encode()
            values.append(base64.b64encode(pair).decode())
        return tuple(value for value in values if value)

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"


def _secret_from(environ: Mapping[str, str], name: str) -> str | None:
    """Read a credential variable, stripped; never show its value in an error."""
    value = environ.get(name, "").strip()
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise ConfigError(f"{name} contains a control character; set it again")
    if any(ord(character) > 255 for character in value):
        # HTTP headers carry Latin-1 only; requests would fail with a traceback.
        raise ConfigError(f"{name} contains a character HTTP headers cannot carry")
    return value or None


def is_loopback(host: str) -> bool:
    """Tell whether a host name or address designates this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_for(domain: str) -> str:
    """Turn a manifest's domain (host or URL) into the Management API base URL."""
    text = domain.strip().rstrip("/")
    if "://" not in text:
        host = urlsplit(f"//{text}").hostname or ""
        scheme = "http" if is_loopback(host) else "https"
        text = f"{scheme}://{text}"
    parts = urlsplit(text)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"invalid domain {domain!r}: expected a host or an URL")
    if parts.username or parts.password:
        raise ConfigError(
            f"invalid domain {parts.hostname!r}: credentials do not belong in the "
            "domain; set ODS_API_KEY or ODS_USERNAME and ODS_PASSWORD"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"invalid domain {domain!r}: HTTPS is required except for loopback hosts"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def _retry_delay(attempt: int, response: requests.Response | None) -> float:
    """Wait Retry-After when the server gives it, else back off exponentially."""
    if response is not None:
        header = response.headers.get("Retry-After", "")
        try:
            return min(max(float(header), 0.0), 60.0)
        except ValueError:
            pass
    return min(0.2 * 2.0**attempt, 10.0) * (0.5 + random.random() / 2)


class Client:
    """Send authenticated requests to one portal, over one shared session."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pool_size: int = 10,
        get_attempts: int = GET_ATTEMPTS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.domain = urlsplit(self.base_url).netloc
        self.credentials = credentials
        self.timeout = timeout
        self.get_attempts = get_attempts
        self.pool_size = pool_size
        self.throttle = Throttle(pool_size)
        self.session = requests.Session()
        # Credentials travel in a header only, never in the URL, so that no
        # server log, proxy or error message built from the URL shows them.
        self.session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=pool_size
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"ods-reconciler/{__version__}"
        self.session.headers["Accept"] = "application/json"
        if credentials.api_key:
            self.session.headers["Authorization"] = f"Apikey {credentials.api_key}"
        else:
            self.session.auth = (credentials.username or "", credentials.password or "")

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def list_datasets(self) -> Iterator[dict[str, Any]]:
        """Yield every dataset the credentials may edit, a page of 100 at a time.

        When the first page gives the total (nhits), the other pages are read
        concurrently, up to the pool size. Otherwise they are read one after
        the other until a short page.
        """
        items, page_size, total = _listing_page(self._list_page(1))
        yield from items
        if total is not None:
            if len(items) < page_size:
                return
            last_page = math.ceil(total / page_size)
            with ThreadPoolExecutor(max_workers=self.pool_size) as pool:
                for body in pool.map(self._list_page, range(2, last_page + 1)):
                    yield from _listing_page(body)[0]
            return
        yield from self._list_following_pages(items, page_size)

    def _list_following_pages(
        self, first: list[dict[str, Any]], page_size: int
    ) -> Iterator[dict[str, Any]]:
        """Read pages 2 and later one by one, until a short or empty page.

        A bare array does not give the page size the server used, so a short
        first page may be a server-side cap rather than the end. Page 2 is read
        to tell: if it has items, the first page's size is the cap.
        """
        if not first:
            return
        page_size = min(page_size, len(first))
        page = 2
        previous = [item.get("dataset_uid") for item in first]
        while True:
            items = _listing_page(self._list_page(page))[0]
            uids = [item.get("dataset_uid") for item in items]
            if uids and uids == previous:
                # A server that ignores `page` would be read forever.
                log.warning(
                    "GET /datasets: page %d repeats page %d; stopping", page, page - 1
                )
                return
            yield from items
            if len(items) < page_size:
                return
            previous = uids
            page += 1

    def _list_page(self, page: int) -> Any:
        return self._get("/datasets", {"rows": PAGE_SIZE, "page": page})

    def get_status(self, uid: str, *, expand_user: bool = False) -> dict[str, Any]:
        """Read one dataset's status: published flag, status name, since."""
        params = {"expand": "user"} if expand_user else None
        body = self._get(f"/datasets/{uid}/status", params, uid=uid)
        if not isinstance(body, dict) or "name" not in body:
            raise ApiError(
                f"GET /datasets/{uid}/status returned no status name: {body!r:.200}"
            )
        return body

    def publish(self, uid: str) -> str | None:
        """Start publishing a dataset; return the job id."""
        return self._put_action(uid, "publish")

    def unpublish(self, uid: str) -> str | None:
        """Start unpublishing a dataset; return the job id."""
        return self._put_action(uid, "unpublish")

    def abort_processing(self, uid: str) -> str | None:
        """Abort the processing under way; return the job id when one is given."""
        return self._put_action(uid, "abort_processing")

    def _put_action(self, uid: str, action: str) -> str | None:
        """Send an action. Only a 429 is retried: the portal did not act on it.

        Any other failure may have happened after the portal acted, so the
        caller decides, by reading the status, whether to send it again.
        """
        path = f"/datasets/{uid}/{action}"
        for attempt in range(THROTTLED_ATTEMPTS):
            response = self._send("PUT", path, None, uid=uid)
            if response.status_code != 429 or attempt + 1 == THROTTLED_ATTEMPTS:
                break
            delay = _retry_delay(attempt, response)
            log.info("PUT %s: HTTP 429, retrying in %.1fs", path, delay)
            time.sleep(delay)
        if response.status_code >= 400:
            raise self._error("PUT", path, response, uid=uid)
        try:
            body = response.json()
        except ValueError:
            body = None
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if job_id is None and action != "abort_processing":
            raise ApiError(
                f"PUT {path}: HTTP {response.status_code} without a job_id: "
                f"{self._mask(response.text[:200])!r}"
            )
        return str(job_id) if job_id is not None else None

    def _get(
        self, path: str, params: Mapping[str, Any] | None, *, uid: str | None = None
    ) -> Any:
        """Send a GET, retrying on connection errors, timeouts, 429 and 5xx.

        429 responses have their own, larger budget, because a 429 requests a
        wait, not giving up, and the throttle has already slowed the run down.
        """
        failures = throttled = 0
        while True:
            response: requests.Response | None = None
            try:
                response = self._send("GET", path, params, uid=uid)
            except ApiError as error:
                if error.status_code is not None:
                    raise
                failures += 1
                last_problem = str(error)
            else:
                if response.status_code not in RETRY_STATUSES:
                    break
                if response.status_code == 429:
                    throttled += 1
                else:
                    failures += 1
                last_problem = f"HTTP {response.status_code}"
            if failures >= self.get_attempts or throttled >= THROTTLED_ATTEMPTS:
                attempts = failures + throttled
                raise ApiError(
                    f"GET {path} failed after {attempts} attempts: {last_problem}"
                )
            delay = _retry_delay(max(failures, 1) - 1, response)
            log.info("GET %s: %s, retrying in %.1fs", path, last_problem, delay)
            time.sleep(delay)
        assert response is not None
        if response.status_code >= 400:
            raise self._error("GET", path, response, uid=uid)
        try:
            return response.json()
        except ValueError as error:
            raise ApiError(
                f"GET {path}: HTTP {response.status_code} returned invalid JSON"
            ) from error

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        *,
        uid: str | None = None,
    ) -> requests.Response:
        """Send one request; wrap transport failures in ApiError."""
        self.throttle.acquire()
        started = time.monotonic()
        try:
            response = self.session.request(
                method, self.base_url + path, params=params, timeout=self.timeout
            )
        except requests.RequestException as error:
            self.throttle.release()
            reason = self._mask(f"{type(error).__name__}: {error}")
            raise ApiError(
                f"{method} {path}: request failed: {reason}", ambiguous=True
            ) from None
        throttled = response.status_code == 429
        self.throttle.release(
            throttled=throttled,
            retry_after=_retry_delay(0, response) if throttled else 0.0,
        )
        elapsed = time.monotonic() - started
        log.debug("%s %s -> %d (%.3fs)", method, path, response.status_code, elapsed)
        return response

    def _error(
        self, method: str, path: str, response: requests.Response, *, uid: str | None
    ) -> ApiError:
        """Build a clear error from the platform's error body."""
        body = _json_or_none(response)
        message = body.get("message") if isinstance(body, dict) else None
        error_key = body.get("error_key") if isinstance(body, dict) else None
        if not message:
            message = response.reason or response.text[:200]
        message = str(message).strip().rstrip(".")
        text = f"{method} {path}: HTTP {response.status_code}: {message}"
        status = response.status_code
        if status == 401:
            text += f"; {self.credentials.source} was rejected by {self.domain}"
        elif status == 403:
            right = PUBLISH_RIGHT if uid else LIST_RIGHT
            text += (
                f"; {self.credentials.source} lacks the {right} right on {self.domain}"
            )
        elif status == 404 and uid:
            text = f"{text}; dataset {uid} does not exist on {self.domain}"
        return ApiError(
            self._mask(text),
            status_code=status,
            error_key=str(error_key or ""),
            ambiguous=status >= 500,
        )

    def _mask(self, text: str) -> str:
        """Replace any secret the text contains, such as one the server echoed.

        Values shorter than MIN_MASKED are left alone: replacing every "a" or
        "127" would garble the message and show where the secret occurs.
        """
        for secret in self.credentials.secrets():
            if len(secret) >= MIN_MASKED:
                text = text.replace(secret, "***")
        return text


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _listing_page(body: Any) -> tuple[list[dict[str, Any]], int, int | None]:
    """Return a listing page's items, its page size and the total when given."""
    if isinstance(body, list):
        return [i for i in body if isinstance(i, dict)], PAGE_SIZE, None
    if isinstance(body, dict) and isinstance(body.get("datasets"), list):
        items = [i for i in body["datasets"] if isinstance(i, dict)]
        rows = body.get("rows")
        page_size = (
            rows if isinstance(rows, int) and 0 < rows <= PAGE_SIZE else PAGE_SIZE
        )
        total = body.get("nhits")
        return items, page_size, total if isinstance(total, int) else None
    raise ApiError(
        f"GET /datasets returned neither a list nor a datasets envelope: {body!r:.200}"
    )
