"""The simulator's state: datasets, status transitions over time, request tally."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

# Username that ?expand=user reports for a seeded status.
DEFAULT_DATASET_USER = "portal-admin"

SETTLED_STATUSES = ("idle", "error", "limit_reached")
ABORTABLE_STATUSES = ("queued", "processing")
SEEDED_BUSY_STATUSES = ("queued", "processing", "deleting")
SEED_STATUSES = SETTLED_STATUSES + SEEDED_BUSY_STATUSES


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
    # When set, every publish of this dataset ends in error with this message,
    # the published flag unchanged, as when the source cannot be read.
    fail_publish: str | None = None

    def __post_init__(self) -> None:
        if self.status not in SEED_STATUSES:
            raise ValueError(
                f"Invalid status {self.status!r} for {self.uid!r}: expected one of "
                + ", ".join(SEED_STATUSES)
            )


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
    # The status and message the action ends in.
    final_status: str = "idle"
    final_message: str | None = None

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
class Observed:
    """The status of a dataset at one moment, as the API reports it."""

    dataset: SimulatedDataset
    name: str
    since: str
    published: bool
    message: str | None
    user: str


class PreconditionFailed(Exception):
    def __init__(self, current_status: str, authorized: tuple[str, ...]) -> None:
        super().__init__(current_status)
        self.current_status = current_status
        self.authorized = authorized


class DatasetStore:
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

    def observe(self, uid: str) -> Observed:
        """Return the current status of a dataset, or raise KeyError if unknown."""
        with self._lock:
            return self._observe(self._entries[uid], self._clock())

    def page(self, rows: int, page: int) -> list[Observed]:
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
                raise PreconditionFailed(current, authorized)
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
        failure = entry.dataset.fail_publish if verb == "publish" else None
        return _Action(
            phases=[("queued", now), (busy_status, now + self._step)],
            ends_at=now + 2 * self._step,
            published_before=entry.published,
            published_after=entry.published if failure else verb == "publish",
            user=user,
            final_status="error" if failure else "idle",
            final_message=failure,
        )

    def _observe(self, entry: _Entry, now: float) -> Observed:
        self._settle_finished_action(entry, now)
        action = entry.action
        if action is None:
            return Observed(
                entry.dataset,
                entry.status,
                self._isoformat(entry.since),
                entry.published,
                entry.message,
                entry.user,
            )
        name, started_at = action.current_phase(now)
        return Observed(
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
        entry.status = action.final_status
        entry.published = action.published_after
        entry.message = action.final_message
        entry.since = action.ends_at
        entry.user = action.user
        entry.action = None

    def _isoformat(self, moment: float) -> str:
        wall = self._wall_origin + timedelta(seconds=moment - self._origin)
        return wall.isoformat(timespec="milliseconds")


# --- Request tally ---------------------------------------------------------------


class Tally:
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
