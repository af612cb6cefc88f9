"""A local simulator of the Management API v2 publication endpoints.

It serves the dataset listing, the status endpoint and the publish, unpublish and
abort_processing actions over real HTTP on 127.0.0.1, for the quick-start demo,
integration tests and benchmarks. Status transitions follow a monotonic clock and
are computed when a request reads them, so no background thread drives them. Fault
knobs add latency, 503 and 429 responses and dropped connections, and a tally counts
requests by route.
"""

from __future__ import annotations

import json
import logging
import random
import re
import string
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import yaml

from reconciler.errors import ConfigError
from reconciler.simulator_api import (
    ADMIN_PREFIX,
    API_PREFIX,
    DEFAULT_RIGHTS,
    EDIT_DATASET,
    PUBLISH_DATASET,
    Api,
    SimulatorConfig,
    status_body,
)
from reconciler.simulator_http import Server
from reconciler.simulator_store import (
    ABORTABLE_STATUSES,
    DEFAULT_DATASET_USER,
    SEED_STATUSES,
    SEEDED_BUSY_STATUSES,
    SETTLED_STATUSES,
    DatasetStore,
    SimulatedDataset,
    Tally,
)

if TYPE_CHECKING:
    import click

__all__ = [
    "ABORTABLE_STATUSES",
    "ADMIN_PREFIX",
    "API_PREFIX",
    "DEFAULT_DATASET_USER",
    "DEFAULT_RIGHTS",
    "EDIT_DATASET",
    "PUBLISH_DATASET",
    "SEEDED_BUSY_STATUSES",
    "SEED_STATUSES",
    "SETTLED_STATUSES",
    "SimulatedDataset",
    "Simulator",
    "SimulatorConfig",
    "generate_datasets",
    "load_seed",
]

logger = logging.getLogger(__name__)


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
        self._tally = Tally()
        self._store = DatasetStore(datasets, config.step_seconds, clock)
        self._api = Api(self._store, config, self._tally)
        self._server: Server | None = None
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
        self._server = Server(port, self._api, self._tally)
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
        return status_body(self._store.observe(uid), expand_user=False)

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
# deleting only), `title`, `user` and `fail_publish` (a message: every publish
# of the dataset then ends in error with it).


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
    "fail_publish": (_is_text, "a non-empty string"),
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
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason})") from None
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
        fail_publish=entry.get("fail_publish"),
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
