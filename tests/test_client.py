from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import responses
from responses import matchers

from reconciler import __version__
from reconciler.client import Client, Credentials, base_url_for
from reconciler.errors import ApiError, ConfigError

BASE = "https://portal.example.invalid/api/management/v2"
KEY = "k3y-s3cr3t-value"
APIKEY_HEADERS = {
    "Authorization": f"Apikey {KEY}",
    "User-Agent": f"ods-reconciler/{__version__}",
}


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def client() -> Client:
    return Client(BASE, Credentials(api_key=KEY), get_attempts=3)


def error_body(status: int, key: str, message: str) -> dict[str, object]:
    return {
        "status_code": status,
        "error_key": key,
        "message": message,
        "raw_message": message,
        "raw_params": {},
    }


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("portal.example.invalid", BASE),
        (
            "https://data.example.invalid",
            "https://data.example.invalid/api/management/v2",
        ),
        (
            "https://data.example.invalid/",
            "https://data.example.invalid/api/management/v2",
        ),
        (f"{BASE}/", BASE),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/api/management/v2"),
        ("http://localhost:9000", "http://localhost:9000/api/management/v2"),
        ("http://[::1]:9000", "http://[::1]:9000/api/management/v2"),
    ],
    ids=["host", "url", "slash", "api-url", "loopback-host", "localhost", "ipv6"],
)
def test_base_url_for_accepts(domain: str, expected: str) -> None:
    assert base_url_for(domain) == expected


def test_base_url_for_requires_https_off_loopback() -> None:
    with pytest.raises(ConfigError) as caught:
        base_url_for("http://data.example.invalid")
    assert str(caught.value) == (
        "invalid domain 'http://data.example.invalid': "
        "HTTPS is required except for loopback hosts"
    )


def test_base_url_for_rejects_credentials_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        base_url_for("https://user:hunter2@data.example.invalid")
    assert "hunter2" not in str(caught.value)


def test_credentials_prefer_api_key() -> None:
    env = {"ODS_API_KEY": KEY, "ODS_USERNAME": "u", "ODS_PASSWORD": "p"}
    assert Credentials.from_env(env) == Credentials(api_key=KEY)


def test_credentials_basic_needs_both() -> None:
    with pytest.raises(ConfigError) as caught:
        Credentials.from_env({"ODS_USERNAME": "alice"})
    assert "ODS_USERNAME and ODS_PASSWORD must be set together" in str(caught.value)


def test_credentials_missing() -> None:
    with pytest.raises(ConfigError) as caught:
        Credentials.from_env({})
    assert str(caught.value) == (
        "no credentials: set ODS_API_KEY (recommended), "
        "or ODS_USERNAME and ODS_PASSWORD"
    )


def test_credentials_repr_hides_secret() -> None:
    assert KEY not in repr(Credentials(api_key=KEY))
    assert "pw" not in repr(Credentials(username="alice", password="pw"))


def test_list_datasets_pages_envelope(
    mock: responses.RequestsMock, client: Client
) -> None:
    page1 = [{"dataset_uid": f"da_{i:03d}"} for i in range(100)]
    page2 = [{"dataset_uid": "da_last"}]
    for page, items in ((1, page1), (2, page2)):
        mock.get(
            f"{BASE}/datasets",
            json={"datasets": items, "rows": 100, "page": page, "nhits": 101},
            match=[
                matchers.query_param_matcher({"rows": "100", "page": str(page)}),
                matchers.header_matcher(APIKEY_HEADERS),
            ],
        )
    uids = [item["dataset_uid"] for item in client.list_datasets()]
    assert len(uids) == 101
    assert uids[-1] == "da_last"


def test_list_datasets_accepts_bare_array(
    mock: responses.RequestsMock, client: Client
) -> None:
    pages = {1: [{"dataset_uid": "da_a"}, {"dataset_uid": "da_b"}], 2: []}
    for page, items in pages.items():
        mock.get(
            f"{BASE}/datasets",
            json=items,
            match=[matchers.query_param_matcher({"rows": "100", "page": str(page)})],
        )
    assert [i["dataset_uid"] for i in client.list_datasets()] == ["da_a", "da_b"]


def test_list_datasets_bare_array_follows_server_cap(
    mock: responses.RequestsMock, client: Client
) -> None:
    for page, count in ((1, 37), (2, 37), (3, 5)):
        items = [{"dataset_uid": f"da_{page}{i:02d}"} for i in range(count)]
        mock.get(
            f"{BASE}/datasets",
            json=items,
            match=[matchers.query_param_matcher({"rows": "100", "page": str(page)})],
        )
    assert len(list(client.list_datasets())) == 79


def test_list_datasets_stops_when_server_ignores_page(
    mock: responses.RequestsMock, client: Client
) -> None:
    mock.get(f"{BASE}/datasets", json=[{"dataset_uid": "da_a"}])
    assert [i["dataset_uid"] for i in client.list_datasets()] == ["da_a"]


def test_list_datasets_stops_at_nhits(
    mock: responses.RequestsMock, client: Client
) -> None:
    items = [{"dataset_uid": f"da_{i:03d}"} for i in range(100)]
    mock.get(f"{BASE}/datasets", json={"datasets": items, "rows": 100, "nhits": 100})
    assert len(list(client.list_datasets())) == 100


def test_list_datasets_follows_smaller_page_size(
    mock: responses.RequestsMock, client: Client
) -> None:
    for page, count in ((1, 50), (2, 50), (3, 7)):
        items = [{"dataset_uid": f"da_{page}{i:02d}"} for i in range(count)]
        mock.get(
            f"{BASE}/datasets",
            json={"datasets": items, "rows": 50},
            match=[matchers.query_param_matcher({"rows": "100", "page": str(page)})],
        )
    assert len(list(client.list_datasets())) == 107


def test_list_datasets_rejects_unknown_shape(
    mock: responses.RequestsMock, client: Client
) -> None:
    mock.get(f"{BASE}/datasets", json={"results": []})
    with pytest.raises(ApiError) as caught:
        list(client.list_datasets())
    assert str(caught.value) == (
        "GET /datasets returned neither a list nor a datasets envelope: {'results': []}"
    )


def test_get_status_sends_basic_auth(mock: responses.RequestsMock) -> None:
    token = base64.b64encode(b"alice:pw").decode()
    mock.get(
        f"{BASE}/datasets/da_a/status",
        json={"published": True, "name": "idle", "since": "2026-12-01T00:00:00+00:00"},
        match=[matchers.header_matcher({"Authorization": f"Basic {token}"})],
    )
    client = Client(BASE, Credentials(username="alice", password="pw"))
    assert client.get_status("da_a")["name"] == "idle"


def test_get_status_expand_user(mock: responses.RequestsMock, client: Client) -> None:
    mock.get(
        f"{BASE}/datasets/da_a/status",
        json={"published": True, "name": "idle", "user": {"username": "bob"}},
        match=[matchers.query_param_matcher({"expand": "user"})],
    )
    assert client.get_status("da_a", expand_user=True)["user"] == {"username": "bob"}


@pytest.mark.parametrize("action", ["publish", "unpublish", "abort_processing"])
def test_actions_put_and_return_job_id(
    mock: responses.RequestsMock, client: Client, action: str
) -> None:
    mock.put(
        f"{BASE}/datasets/da_a/{action}",
        json={"job_id": "a" * 40},
        match=[matchers.header_matcher(APIKEY_HEADERS)],
    )
    assert getattr(client, action)("da_a") == "a" * 40


def test_abort_accepts_empty_body(mock: responses.RequestsMock, client: Client) -> None:
    mock.put(f"{BASE}/datasets/da_a/abort_processing", body="")
    assert client.abort_processing("da_a") is None


def test_publish_without_job_id_is_an_error(
    mock: responses.RequestsMock, client: Client
) -> None:
    mock.put(f"{BASE}/datasets/da_a/publish", json={})
    with pytest.raises(ApiError) as caught:
        client.publish("da_a")
    assert (
        str(caught.value)
        == "PUT /datasets/da_a/publish: HTTP 200 without a job_id: '{}'"
    )


def test_precondition_error_gives_platform_message(
    mock: responses.RequestsMock, client: Client
) -> None:
    message = (
        "Invalid precondition, dataset status is 'queued' but must be one of "
        "'idle, error, limit_reached'"
    )
    body = error_body(400, "InvalidDatasetStatusPreconditionException", message)
    mock.put(f"{BASE}/datasets/da_a/publish", status=400, json=body)
    with pytest.raises(ApiError) as caught:
        client.publish("da_a")
    assert str(caught.value) == f"PUT /datasets/da_a/publish: HTTP 400: {message}"
    assert caught.value.error_key == "InvalidDatasetStatusPreconditionException"


def test_401_names_credential_variable(
    mock: responses.RequestsMock, client: Client
) -> None:
    body = error_body(401, "AuthenticationRequired", "Authentication required")
    mock.get(f"{BASE}/datasets", status=401, json=body)
    with pytest.raises(ApiError) as caught:
        list(client.list_datasets())
    assert str(caught.value) == (
        "GET /datasets: HTTP 401: Authentication required; the API key in "
        "ODS_API_KEY was rejected by portal.example.invalid"
    )


def test_403_names_missing_right(mock: responses.RequestsMock, client: Client) -> None:
    body = error_body(403, "Forbidden", "Permission denied")
    mock.get(f"{BASE}/datasets/da_a/status", status=403, json=body)
    with pytest.raises(ApiError) as caught:
        client.get_status("da_a")
    assert str(caught.value) == (
        "GET /datasets/da_a/status: HTTP 403: Permission denied; the API key in "
        "ODS_API_KEY lacks the publish_dataset right on portal.example.invalid"
    )


def test_403_on_listing_names_edit_right(mock: responses.RequestsMock) -> None:
    mock.get(f"{BASE}/datasets", status=403, json=error_body(403, "F", "Denied"))
    client = Client(BASE, Credentials(username="alice", password="pw"))
    with pytest.raises(ApiError) as caught:
        list(client.list_datasets())
    assert str(caught.value) == (
        "GET /datasets: HTTP 403: Denied; the account in ODS_USERNAME (alice) "
        "lacks the edit_dataset right on portal.example.invalid"
    )


def test_404_says_dataset_does_not_exist(
    mock: responses.RequestsMock, client: Client
) -> None:
    body = error_body(404, "DatasetNotFound", "Dataset not found")
    mock.get(f"{BASE}/datasets/da_zz/status", status=404, json=body)
    with pytest.raises(ApiError) as caught:
        client.get_status("da_zz")
    assert str(caught.value) == (
        "GET /datasets/da_zz/status: HTTP 404: Dataset not found; "
        "dataset da_zz does not exist on portal.example.invalid"
    )
    assert caught.value.status_code == 404


def test_get_retries_5xx_and_429(mock: responses.RequestsMock, client: Client) -> None:
    url = f"{BASE}/datasets/da_a/status"
    mock.get(url, status=503, json=error_body(503, "Unavailable", "down"))
    mock.get(url, status=429, headers={"Retry-After": "0"})
    mock.get(url, json={"published": False, "name": "idle"})
    assert client.get_status("da_a")["published"] is False


def test_get_gives_up_after_attempts(
    mock: responses.RequestsMock, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("reconciler.client.time.sleep", lambda seconds: None)
    url = f"{BASE}/datasets/da_a/status"
    for _ in range(3):
        mock.get(url, status=502)
    with pytest.raises(ApiError) as caught:
        client.get_status("da_a")
    assert str(caught.value) == (
        "GET /datasets/da_a/status failed after 3 attempts: HTTP 502"
    )


def test_put_is_not_retried(mock: responses.RequestsMock, client: Client) -> None:
    mock.put(
        f"{BASE}/datasets/da_a/publish", status=503, json=error_body(503, "U", "down")
    )
    with pytest.raises(ApiError) as caught:
        client.publish("da_a")
    assert str(caught.value) == "PUT /datasets/da_a/publish: HTTP 503: down"


def test_echoed_secret_is_masked(mock: responses.RequestsMock, client: Client) -> None:
    body = error_body(401, "BadKey", f"Unknown API key {KEY}")
    mock.get(f"{BASE}/datasets", status=401, json=body)
    with pytest.raises(ApiError) as caught:
        list(client.list_datasets())
    assert KEY not in str(caught.value)
    assert "Unknown API key ***" in str(caught.value)


def test_credentials_strip_pasted_newline() -> None:
    assert Credentials.from_env({"ODS_API_KEY": f"{KEY}\n"}) == Credentials(api_key=KEY)


def test_credentials_control_character_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        Credentials.from_env({"ODS_API_KEY": "abc\x07def"})
    assert str(caught.value) == (
        "ODS_API_KEY contains a control character; set it again"
    )


def test_short_secret_is_not_masked_inside_words(
    mock: responses.RequestsMock,
) -> None:
    body = error_body(401, "BadAuth", "username and password were not accepted")
    mock.get(f"{BASE}/datasets", status=401, json=body)
    client = Client(BASE, Credentials(username="u", password="p"))
    with pytest.raises(ApiError) as caught:
        list(client.list_datasets())
    assert "username and password were not accepted" in str(caught.value)
