"""Tests of the Management API simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from reconciler.errors import ConfigError
from reconciler.simulator import (
    DEFAULT_RIGHTS,
    EDIT_DATASET,
    PUBLISH_DATASET,
    SimulatedDataset,
    Simulator,
    SimulatorConfig,
    generate_datasets,
    load_seed,
)

REPOSITORY = Path(__file__).resolve().parent.parent
API_KEY = "test-key"
AUTH = {"Authorization": f"Apikey {API_KEY}"}
# A power of two keeps sums of steps exact, so the manual clock lands on phase starts.
STEP = 0.0625


class ManualClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample_datasets() -> list[SimulatedDataset]:
    return [
        SimulatedDataset("da_aaa001", "bike-counters", published=True),
        SimulatedDataset("da_bbb002", "traffic-incidents", published=False),
        SimulatedDataset(
            "da_ccc003",
            "ev-charging-points",
            published=True,
            status="error",
            message="Processing failed: the source file returned HTTP 404",
        ),
        SimulatedDataset(
            "da_ddd004",
            "waste-calendar",
            published=True,
            status="processing",
            busy_seconds=1.0,
        ),
        SimulatedDataset(
            "da_eee005", "old-road-works", published=True, status="deleting"
        ),
    ]


StartSimulator = Callable[..., Simulator]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def start_simulator(clock: ManualClock) -> Iterator[StartSimulator]:
    """Start simulators on free ports with test credentials; stop them afterwards."""
    started: list[Simulator] = []

    def start(
        datasets: list[SimulatedDataset] | None = None,
        real_clock: bool = False,
        **knobs: Any,
    ) -> Simulator:
        config = SimulatorConfig(
            api_keys={
                API_KEY: DEFAULT_RIGHTS,
                "edit-only": frozenset({EDIT_DATASET}),
                "publish-only": frozenset({PUBLISH_DATASET}),
            },
            users={"alice": ("s3cret", DEFAULT_RIGHTS)},
            step_seconds=STEP,
            **knobs,
        )
        chosen = sample_datasets() if datasets is None else datasets
        simulator = (
            Simulator(chosen, config)
            if real_clock
            else Simulator(chosen, config, clock=clock)
        )
        simulator.start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


@pytest.fixture
def simulator(start_simulator: StartSimulator) -> Simulator:
    return start_simulator()


def get_status(simulator: Simulator, uid: str, **params: str) -> dict[str, Any]:
    response = requests.get(
        f"{simulator.api_url}/datasets/{uid}/status", headers=AUTH, params=params
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def put_action(simulator: Simulator, uid: str, verb: str) -> requests.Response:
    return requests.put(f"{simulator.api_url}/datasets/{uid}/{verb}", headers=AUTH)


# --- Listing ---------------------------------------------------------------------


def test_listing_pages_with_nhits(simulator: Simulator) -> None:
    url = f"{simulator.api_url}/datasets"

    first = requests.get(url, headers=AUTH, params={"rows": 2, "page": 1}).json()
    last = requests.get(url, headers=AUTH, params={"rows": 2, "page": 3}).json()

    assert [item["dataset_uid"] for item in first["datasets"]] == [
        "da_aaa001",
        "da_bbb002",
    ]
    assert (first["rows"], first["page"], first["nhits"]) == (2, 1, 5)
    assert [item["dataset_uid"] for item in last["datasets"]] == ["da_eee005"]
    assert (last["rows"], last["page"], last["nhits"]) == (2, 3, 5)


def test_listing_item_shape(simulator: Simulator) -> None:
    body = requests.get(f"{simulator.api_url}/datasets", headers=AUTH).json()
    item = body["datasets"][0]
    since = item["status"].pop("since")

    assert item.pop("last_modified") == since
    assert datetime.fromisoformat(since).utcoffset() is not None
    assert item == {
        "dataset_uid": "da_aaa001",
        "dataset_id": "bike-counters",
        "visibility": "domain",
        "metas": {
            "default": {"title": "Bike counters"},
            "publishing": {"published": True},
        },
        "status": {"name": "idle"},
    }


def test_listing_defaults_to_ten_rows(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(generate_datasets(12))

    body = requests.get(f"{simulator.api_url}/datasets", headers=AUTH).json()

    assert len(body["datasets"]) == 10
    assert (body["rows"], body["page"], body["nhits"]) == (10, 1, 12)


def test_listing_caps_rows_at_max_rows(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(max_rows=2)

    body = requests.get(
        f"{simulator.api_url}/datasets", headers=AUTH, params={"rows": 100}
    ).json()

    assert len(body["datasets"]) == 2
    assert body["rows"] == 2
    assert body["nhits"] == 5


def test_listing_bare_array(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(bare_listing=True)

    body = requests.get(f"{simulator.api_url}/datasets", headers=AUTH).json()

    assert isinstance(body, list)
    assert [item["dataset_uid"] for item in body][:2] == ["da_aaa001", "da_bbb002"]


def test_listing_without_status(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(listing_status=False)

    body = requests.get(f"{simulator.api_url}/datasets", headers=AUTH).json()

    assert all("status" not in item for item in body["datasets"])
    assert body["datasets"][1]["metas"]["publishing"] == {"published": False}


def test_listing_accepts_trailing_slash(simulator: Simulator) -> None:
    response = requests.get(f"{simulator.api_url}/datasets/", headers=AUTH)

    assert response.status_code == 200
    assert response.json()["nhits"] == 5


@pytest.mark.parametrize("rows", ["0", "ten", "-1"], ids=["zero", "word", "negative"])
def test_listing_rejects_invalid_rows(simulator: Simulator, rows: str) -> None:
    response = requests.get(
        f"{simulator.api_url}/datasets", headers=AUTH, params={"rows": rows}
    )

    assert response.status_code == 400
    assert response.json()["error_key"] == "InvalidManagementAPIRequestException"
    assert response.json()["raw_params"] == {"value": rows, "parameter": "rows"}


# --- Status ----------------------------------------------------------------------


def test_status_returns_published_name_since(simulator: Simulator) -> None:
    body = get_status(simulator, "da_aaa001")

    assert set(body) == {"published", "name", "since"}
    assert body["published"] is True
    assert body["name"] == "idle"
    assert body["since"].endswith("+00:00")
    assert datetime.fromisoformat(body["since"]).year >= 2024


def test_status_error_includes_message(simulator: Simulator) -> None:
    body = get_status(simulator, "da_ccc003")

    assert body["name"] == "error"
    assert body["published"] is True
    assert body["message"] == "Processing failed: the source file returned HTTP 404"
    assert body["raw_message"] == body["message"]
    assert body["raw_params"] == {}


def test_status_expand_user_names_seeded_user(simulator: Simulator) -> None:
    body = get_status(simulator, "da_aaa001", expand="user")

    assert body["user"] == {"username": "portal-admin"}


def test_status_expand_user_names_basic_user(simulator: Simulator) -> None:
    requests.put(
        f"{simulator.api_url}/datasets/da_bbb002/publish", auth=("alice", "s3cret")
    )

    body = get_status(simulator, "da_bbb002", expand="user")

    assert body["user"] == {"username": "alice"}


def test_status_unknown_uid_returns_404(simulator: Simulator) -> None:
    response = requests.get(f"{simulator.api_url}/datasets/da_x/status", headers=AUTH)

    assert response.status_code == 404
    assert response.json() == {
        "status_code": 404,
        "error_key": "DatasetNotFoundException",
        "message": "Dataset 'da_x' not found",
        "raw_message": "Dataset '{dataset_uid}' not found",
        "raw_params": {"dataset_uid": "da_x"},
    }


def test_snapshot_matches_status_endpoint(simulator: Simulator) -> None:
    assert simulator.snapshot("da_ccc003") == get_status(simulator, "da_ccc003")


# --- Authentication and routing --------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "auth"),
    [
        ({"Authorization": f"Apikey {API_KEY}"}, {}, None),
        ({"Authorization": f"apikey {API_KEY}"}, {}, None),
        ({}, {"apikey": API_KEY}, None),
        ({}, {}, ("alice", "s3cret")),
    ],
    ids=["apikey-header", "lower-case-scheme", "query-parameter", "basic"],
)
def test_auth_accepts_each_method(
    simulator: Simulator,
    headers: dict[str, str],
    params: dict[str, str],
    auth: tuple[str, str] | None,
) -> None:
    response = requests.get(
        f"{simulator.api_url}/datasets", headers=headers, params=params, auth=auth
    )

    assert response.status_code == 200


def test_auth_missing_credentials_returns_401(simulator: Simulator) -> None:
    response = requests.get(f"{simulator.api_url}/datasets")

    assert response.status_code == 401
    assert response.json() == {
        "status_code": 401,
        "error_key": "AuthenticationRequiredException",
        "message": "Authentication required: send an API key or Basic credentials.",
        "raw_message": "Authentication required: send an API key or Basic credentials.",
        "raw_params": {},
    }


@pytest.mark.parametrize(
    ("headers", "auth"),
    [
        ({"Authorization": "Apikey wrong"}, None),
        ({}, ("alice", "wrong")),
        ({"Authorization": "Bearer test-key"}, None),
    ],
    ids=["wrong-key", "wrong-password", "unknown-scheme"],
)
def test_auth_invalid_credentials_return_401(
    simulator: Simulator, headers: dict[str, str], auth: tuple[str, str] | None
) -> None:
    response = requests.get(f"{simulator.api_url}/datasets", headers=headers, auth=auth)

    assert response.status_code == 401
    assert response.json()["error_key"] == "InvalidCredentialsException"
    assert response.json()["status_code"] == 401


@pytest.mark.parametrize(
    ("key", "path", "missing"),
    [
        ("edit-only", "/datasets/da_aaa001/status", "publish_dataset"),
        ("edit-only", "/datasets/da_aaa001/publish", "publish_dataset"),
        ("publish-only", "/datasets", "edit_dataset"),
    ],
    ids=["status", "publish", "listing"],
)
def test_auth_missing_right_returns_403(
    simulator: Simulator, key: str, path: str, missing: str
) -> None:
    method = "PUT" if path.endswith("publish") else "GET"

    response = requests.request(
        method, simulator.api_url + path, headers={"Authorization": f"Apikey {key}"}
    )

    assert response.status_code == 403
    assert response.json() == {
        "status_code": 403,
        "error_key": "PermissionDeniedException",
        "message": f"User 'api-key-owner' lacks the '{missing}' permission that "
        "this request requires.",
        "raw_message": "User '{username}' lacks the '{permission}' permission that "
        "this request requires.",
        "raw_params": {"username": "api-key-owner", "permission": missing},
    }
    assert simulator.snapshot("da_aaa001")["name"] == "idle"


def test_routing_unknown_path_returns_404(simulator: Simulator) -> None:
    response = requests.get(f"{simulator.api_url}/catalog", headers=AUTH)

    assert response.status_code == 404
    assert response.json()["error_key"] == "ResourceNotFoundException"
    assert response.json()["message"] == "No resource at '/api/management/v2/catalog'"


def test_routing_wrong_method_returns_405(simulator: Simulator) -> None:
    response = requests.post(
        f"{simulator.api_url}/datasets/da_aaa001/publish", headers=AUTH
    )

    assert response.status_code == 405
    assert response.headers["Allow"] == "PUT"
    assert response.json()["error_key"] == "MethodNotAllowedException"


def test_routing_keeps_connection_alive(simulator: Simulator) -> None:
    port = urlsplit(simulator.url).port
    connection = http.client.HTTPConnection("127.0.0.1", port)
    sockets = []
    try:
        for _ in range(3):
            connection.request("GET", "/api/management/v2/datasets", headers=AUTH)
            response = connection.getresponse()
            body = json.loads(response.read())
            sockets.append(connection.sock)

            assert response.status == 200
            assert response.getheader("Connection") is None
            assert body["nhits"] == 5
    finally:
        connection.close()

    assert sockets[0] is sockets[1] is sockets[2]


# --- Actions and transitions -----------------------------------------------------


def test_publish_moves_queued_processing_idle(
    simulator: Simulator, clock: ManualClock
) -> None:
    response = put_action(simulator, "da_bbb002", "publish")
    queued = get_status(simulator, "da_bbb002")
    clock.advance(STEP)
    processing = get_status(simulator, "da_bbb002")
    clock.advance(STEP)
    idle = get_status(simulator, "da_bbb002")

    assert response.status_code == 200
    assert (queued["name"], queued["published"]) == ("queued", False)
    assert (processing["name"], processing["published"]) == ("processing", False)
    assert (idle["name"], idle["published"]) == ("idle", True)
    assert queued["since"] < processing["since"] < idle["since"]


def test_publish_returns_40_hex_job_id(simulator: Simulator) -> None:
    response = put_action(simulator, "da_bbb002", "publish")

    assert re.fullmatch(r"[0-9a-f]{40}", response.json()["job_id"])


def test_publish_published_dataset_republishes(
    simulator: Simulator, clock: ManualClock
) -> None:
    response = put_action(simulator, "da_aaa001", "publish")
    queued = get_status(simulator, "da_aaa001")
    clock.advance(2 * STEP)

    assert response.status_code == 200
    assert (queued["name"], queued["published"]) == ("queued", True)
    assert get_status(simulator, "da_aaa001")["name"] == "idle"


def test_unpublish_moves_through_deleting(
    simulator: Simulator, clock: ManualClock
) -> None:
    put_action(simulator, "da_aaa001", "unpublish")
    queued = get_status(simulator, "da_aaa001")
    clock.advance(STEP)
    deleting = get_status(simulator, "da_aaa001")
    clock.advance(STEP)
    idle = get_status(simulator, "da_aaa001")

    assert (queued["name"], queued["published"]) == ("queued", True)
    assert (deleting["name"], deleting["published"]) == ("deleting", True)
    assert (idle["name"], idle["published"]) == ("idle", False)


def test_unpublish_unpublished_dataset_is_accepted(simulator: Simulator) -> None:
    response = put_action(simulator, "da_bbb002", "unpublish")

    assert response.status_code == 200
    assert get_status(simulator, "da_bbb002")["name"] == "queued"


def test_abort_restores_previous_published_flag(
    simulator: Simulator, clock: ManualClock
) -> None:
    put_action(simulator, "da_bbb002", "publish")
    clock.advance(STEP)
    response = put_action(simulator, "da_bbb002", "abort_processing")
    aborting = get_status(simulator, "da_bbb002")
    clock.advance(STEP)
    idle = get_status(simulator, "da_bbb002")

    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{40}", response.json()["job_id"])
    assert (aborting["name"], aborting["published"]) == ("aborting_processing", False)
    assert (idle["name"], idle["published"]) == ("idle", False)


def test_publish_rejected_while_queued(simulator: Simulator) -> None:
    put_action(simulator, "da_bbb002", "publish")

    response = put_action(simulator, "da_bbb002", "publish")

    assert response.status_code == 400
    assert response.json() == {
        "status_code": 400,
        "error_key": "InvalidDatasetStatusPreconditionException",
        "message": "Invalid precondition, dataset status is 'queued' but must be one "
        "of 'idle, error, limit_reached'",
        "raw_message": "Invalid precondition, dataset status is '{current_status}' "
        "but must be one of '{authorized_origin_status}'",
        "raw_params": {
            "current_status": "queued",
            "authorized_origin_status": "idle, error, limit_reached",
        },
    }


def test_abort_rejected_when_idle(simulator: Simulator) -> None:
    response = put_action(simulator, "da_aaa001", "abort_processing")

    assert response.status_code == 400
    assert response.json()["message"] == (
        "Invalid precondition, dataset status is 'idle' but must be one of "
        "'queued, processing'"
    )
    assert response.json()["raw_params"] == {
        "current_status": "idle",
        "authorized_origin_status": "queued, processing",
    }


def test_publish_unknown_uid_returns_404(simulator: Simulator) -> None:
    response = put_action(simulator, "da_missing", "publish")

    assert response.status_code == 404
    assert response.json()["message"] == "Dataset 'da_missing' not found"


def test_seeded_error_stays_until_action(
    simulator: Simulator, clock: ManualClock
) -> None:
    clock.advance(60)
    assert get_status(simulator, "da_ccc003")["name"] == "error"

    put_action(simulator, "da_ccc003", "publish")
    clock.advance(2 * STEP)
    body = get_status(simulator, "da_ccc003")

    assert body == {"published": True, "name": "idle", "since": body["since"]}


def test_seeded_busy_settles_after_busy_seconds(
    simulator: Simulator, clock: ManualClock
) -> None:
    clock.advance(2 * STEP)
    still_processing = get_status(simulator, "da_ddd004")
    deleted = get_status(simulator, "da_eee005")
    clock.advance(1.0)
    processed = get_status(simulator, "da_ddd004")

    assert (still_processing["name"], still_processing["published"]) == (
        "processing",
        True,
    )
    assert (deleted["name"], deleted["published"]) == ("idle", False)
    assert (processed["name"], processed["published"]) == ("idle", True)


def test_transitions_follow_real_clock(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(real_clock=True)
    put_action(simulator, "da_bbb002", "publish")
    names = []

    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        names.append(get_status(simulator, "da_bbb002")["name"])
        if names[-1] == "idle":
            break
        time.sleep(STEP / 5)

    assert names[0] == "queued"
    assert names[-1] == "idle"
    assert get_status(simulator, "da_bbb002")["published"] is True


# --- Fault knobs -----------------------------------------------------------------


def test_throttle_returns_429_with_retry_after(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(throttle_rate=1.0, retry_after=3)

    response = put_action(simulator, "da_bbb002", "publish")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error_key"] == "TooManyRequestsException"
    assert simulator.snapshot("da_bbb002")["name"] == "idle"


def test_error_rate_returns_503_without_acting(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(error_rate=1.0)

    response = put_action(simulator, "da_bbb002", "publish")

    assert response.status_code == 503
    assert response.json()["status_code"] == 503
    assert response.json()["error_key"] == "ServiceUnavailableException"
    assert simulator.snapshot("da_bbb002")["name"] == "idle"
    assert simulator.stats()["jobs"] == []


def test_drop_after_write_acts_without_response(
    start_simulator: StartSimulator,
) -> None:
    simulator = start_simulator(drop_after_write_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        put_action(simulator, "da_bbb002", "publish")

    assert simulator.snapshot("da_bbb002")["name"] == "queued"
    assert [job["dataset_uid"] for job in simulator.stats()["jobs"]] == ["da_bbb002"]
    assert simulator.stats()["responses"] == {"dropped": 1}


def test_latency_delays_each_request(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(latency=0.2)

    started = time.monotonic()
    get_status(simulator, "da_aaa001")

    assert time.monotonic() - started >= 0.2


# --- Stats -----------------------------------------------------------------------


def test_stats_count_requests_by_route(simulator: Simulator) -> None:
    requests.get(f"{simulator.api_url}/datasets", headers=AUTH)
    get_status(simulator, "da_aaa001")
    get_status(simulator, "da_bbb002")
    job_id = put_action(simulator, "da_bbb002", "publish").json()["job_id"]
    requests.get(f"{simulator.url}/__simulator__/stats")

    stats = requests.get(f"{simulator.url}/__simulator__/stats").json()

    assert stats == {
        "total": 4,
        "requests": {
            "GET /datasets": 1,
            "GET /datasets/{uid}/status": 2,
            "PUT /datasets/{uid}/publish": 1,
        },
        "responses": {"200": 4},
        "jobs": [{"job_id": job_id, "dataset_uid": "da_bbb002", "action": "publish"}],
    }
    assert simulator.stats() == stats


def test_stats_reset_over_http(simulator: Simulator) -> None:
    put_action(simulator, "da_bbb002", "publish")

    response = requests.post(f"{simulator.url}/__simulator__/reset")

    assert response.status_code == 200
    assert simulator.stats() == {
        "total": 0,
        "requests": {},
        "responses": {},
        "jobs": [],
    }
    assert simulator.snapshot("da_bbb002")["name"] == "queued"


def test_stats_reset_in_python(simulator: Simulator) -> None:
    get_status(simulator, "da_aaa001")

    simulator.reset_stats()

    assert simulator.stats()["total"] == 0


def test_concurrent_requests_all_answered(simulator: Simulator) -> None:
    uids = ["da_aaa001", "da_bbb002", "da_ccc003", "da_ddd004", "da_eee005"]

    def read_status(index: int) -> int:
        with requests.Session() as session:
            url = f"{simulator.api_url}/datasets/{uids[index % 5]}/status"
            return session.get(url, headers=AUTH).status_code

    with ThreadPoolExecutor(max_workers=20) as executor:
        codes = list(executor.map(read_status, range(20)))

    assert codes == [200] * 20
    assert simulator.stats()["requests"] == {"GET /datasets/{uid}/status": 20}


def test_stop_closes_idle_keep_alive_connections(
    start_simulator: StartSimulator,
) -> None:
    simulator = start_simulator()
    url = f"{simulator.api_url}/datasets"
    with requests.Session() as session:
        session.get(url, headers=AUTH)

        simulator.stop()

        with pytest.raises(requests.ConnectionError):
            session.get(url, headers=AUTH, timeout=5)


# --- Seed files and generated datasets -------------------------------------------


def test_load_seed_reads_example_file() -> None:
    datasets = load_seed(REPOSITORY / "examples" / "simulator" / "riverton-seed.yaml")
    by_uid = {dataset.uid: dataset for dataset in datasets}

    assert len(datasets) == 18
    assert by_uid["da_g6bus8"].dataset_id == "transit-stops"
    assert by_uid["da_8wst3n"].status == "processing"
    assert by_uid["da_8wst3n"].busy_seconds == 30
    assert by_uid["da_9ev1cs"].message == (
        "Processing failed: the source file https://files.riverton.example.org/"
        "ev.csv returned HTTP 404"
    )


def test_load_seed_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(
        json.dumps(
            {"datasets": [{"uid": "da_1", "dataset_id": 100001, "published": True}]}
        )
    )

    assert load_seed(path) == [SimulatedDataset("da_1", "100001", published=True)]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "{uid: da_1, dataset_id: a, published: yes, status: publishing}",
            "datasets[0] (da_1): invalid 'status': expected one of idle, error, "
            "limit_reached, queued, processing, deleting, got 'publishing'",
        ),
        ("{uid: da_1, dataset_id: a}", "datasets[0] (da_1): missing field 'published'"),
        (
            "{uid: DA-1, dataset_id: a, published: true}",
            "datasets[0] (DA-1): invalid 'uid': expected 'da_' followed by lowercase "
            "letters or digits, got 'DA-1'",
        ),
        (
            "{uid: da_1, dataset_id: a, published: true, state: idle}",
            "datasets[0] (da_1): unknown field 'state'",
        ),
        (
            "{uid: da_1, dataset_id: a, published: true, message: failed}",
            "datasets[0] (da_1): 'message' applies only to status error or "
            "limit_reached, not 'idle'",
        ),
        ("just text", "datasets[0]: expected a mapping with uid, dataset_id and"),
    ],
    ids=["status", "missing-published", "uid", "unknown-field", "message", "scalar"],
)
def test_load_seed_names_file_and_entry(
    tmp_path: Path, entry: str, problem: str
) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(f"datasets:\n  - {entry}\n")

    with pytest.raises(ConfigError) as caught:
        load_seed(path)

    assert str(caught.value).startswith(f"{path}: {problem}")


def test_load_seed_rejects_duplicate_uid(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(
        "datasets:\n"
        "  - {uid: da_1, dataset_id: a, published: true}\n"
        "  - {uid: da_1, dataset_id: b, published: true}\n"
    )

    with pytest.raises(ConfigError) as caught:
        load_seed(path)

    assert str(caught.value) == f"{path}: datasets[1] (da_1): duplicate uid 'da_1'"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("seed.toml", "", "unsupported seed file extension '.toml'"),
        ("seed.yaml", "datasets: [", "invalid YAML"),
        ("seed.json", "{", "invalid JSON"),
        ("seed.yaml", "items: []", "expected a top-level 'datasets' list"),
    ],
    ids=["extension", "yaml-syntax", "json-syntax", "no-datasets"],
)
def test_load_seed_rejects_bad_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_seed(path)

    assert str(caught.value).startswith(f"{path}: {message}")


def test_load_seed_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_seed(tmp_path / "absent.yaml")

    assert "absent.yaml: failed to read seed file" in str(caught.value)


def test_generate_datasets_is_deterministic() -> None:
    first = generate_datasets(50, published_fraction=0.3, seed=7)
    second = generate_datasets(50, published_fraction=0.3, seed=7)

    assert first == second
    assert len({dataset.uid for dataset in first}) == 50
    assert all(re.fullmatch(r"da_[0-9a-z]{6}", dataset.uid) for dataset in first)
    assert 5 <= sum(dataset.published for dataset in first) <= 25
    assert generate_datasets(50, seed=8) != first


# --- Command line ----------------------------------------------------------------


def run_command(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = "from reconciler.simulator import simulator_command; simulator_command()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def environment_without_credentials() -> dict[str, str]:
    names = ("ODS_API_KEY", "ODS_USERNAME", "ODS_PASSWORD")
    return {key: value for key, value in os.environ.items() if key not in names}


def test_command_serves_seed_file() -> None:
    env = environment_without_credentials() | {"ODS_API_KEY": "cli-key"}
    process = run_command(
        "--port", "0", "--seed-file", "examples/simulator/riverton-seed.yaml", env=env
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(
            r"Simulator listening on (http://127\.0\.0\.1:\d+/api/management/v2) "
            r"\(18 datasets\)\n",
            line,
        )
        assert match, line
        response = requests.get(
            f"{match[1]}/datasets/da_g6bus8/status",
            headers={"Authorization": "Apikey cli-key"},
            timeout=5,
        )
        assert response.json()["name"] == "idle"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)

    assert process.returncode == 0
    assert stderr == "Simulator stopped.\n"


def test_command_without_credentials_fails() -> None:
    process = run_command("--generate", "3", env=environment_without_credentials())
    stdout, stderr = process.communicate(timeout=10)

    assert process.returncode == 1
    assert stdout == ""
    assert stderr == (
        "Error: No credentials to accept: set ODS_API_KEY to the API key the "
        "reconciler will send (or set ODS_USERNAME and ODS_PASSWORD).\n"
    )
