"""Read the live state of the manifest's datasets with as few requests as possible.

The listing gives up to 100 datasets a request; the status endpoint one. The
listing is read in full, and the status endpoint only for the datasets that need
it: those the listing lacks or describes without status, those out of sync
(their state is read again just before it is acted on), and those whose last run
failed (the listing carries no error message).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.manifest import Manifest
from reconciler.plan import (
    FAILED_STATUSES,
    PUBLISHED,
    DesiredDataset,
    Observation,
    ObservedDataset,
    Plan,
    UnmanagedDataset,
    Unobservable,
    build_plan,
    paused_gc,
)
from reconciler.state import History

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    function: Callable[[T], R], values: Iterable[T], parallelism: int
) -> list[R]:
    """Apply a function to each value with bounded concurrency, keeping order."""
    values = list(values)
    if parallelism <= 1 or len(values) <= 1:
        return [function(value) for value in values]
    with worker_pool(parallelism) as pool:
        return list(pool.map(function, values))


# Set when the run is interrupted: tasks still running stop waiting and send
# no new request.
STOPPING = threading.Event()


@contextmanager
def worker_pool(parallelism: int) -> Iterator[ThreadPoolExecutor]:
    """Run work on threads; on an exception or interrupt, drop the queued work.

    A plain executor would still run every queued task after Ctrl-C, sending
    the requests the user meant to stop. The tasks already running finish, so
    their state file records are complete.
    """
    pool = ThreadPoolExecutor(max_workers=parallelism)
    try:
        yield pool
    except KeyboardInterrupt:
        STOPPING.set()
        _shut_down_despite_signals(pool)
        raise
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _shut_down_despite_signals(pool: ThreadPoolExecutor) -> None:
    """Wait for the running tasks, even through further Ctrl-C or SIGTERM.

    Returning earlier would release the state file's lock while a task may
    still write to the file.
    """
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            continue


def observe(
    client: Client,
    desired: Sequence[DesiredDataset],
    *,
    managed: Collection[str] = (),
    parallelism: int = 8,
    expand_user: bool = False,
) -> tuple[dict[str, Observation], list[UnmanagedDataset]]:
    """Observe each desired dataset; also list the datasets no manifest manages.

    `managed` contains every uid of the manifest, including those left out of
    `desired` by a selection: they are not reported as unmanaged. A status
    read starts as soon as the listing page that calls for it arrives, while
    the other pages are still read; the client's throttle keeps the requests
    in flight within `parallelism`.
    """
    wanted = {entry.uid: entry for entry in desired}
    managed = set(wanted).union(managed)
    observations: dict[str, Observation] = {}
    unmanaged: list[UnmanagedDataset] = []
    reads: dict[str, Future[Observation]] = {}

    def read(uid: str, item: dict[str, Any] | None) -> Observation:
        return read_status(client, uid, item, expand_user=expand_user)

    with worker_pool(parallelism) as pool:
        for item in client.list_datasets():
            uid = item.get("dataset_uid")
            entry = wanted.get(uid) if isinstance(uid, str) else None
            if entry is None:
                if isinstance(uid, str) and uid not in managed:
                    unmanaged.append(_unmanaged(item, uid))
                continue
            observed = from_listing(item)
            if observed is None or needs_status_read(entry, observed):
                reads[entry.uid] = pool.submit(read, entry.uid, item)
            else:
                observations[entry.uid] = observed
        log.info(
            "listing: %d of %d managed datasets found",
            len(observations) + len(reads),
            len(wanted),
        )
        for uid in wanted:
            if uid not in observations and uid not in reads:
                reads[uid] = pool.submit(read, uid, None)
        log.info("reading the status of %d datasets", len(reads))
        for uid, future in reads.items():
            observations[uid] = future.result()
    return observations, sorted(unmanaged, key=lambda dataset: dataset.uid)


def _unmanaged(item: dict[str, Any], uid: str) -> UnmanagedDataset:
    return UnmanagedDataset(uid, _text(item.get("dataset_id")), _listed_published(item))


def from_listing(item: dict[str, Any] | None) -> ObservedDataset | None:
    """Build an observation from a listing item, or None if it lacks a field."""
    if item is None:
        return None
    status = item.get("status")
    published = _listed_published(item)
    if not isinstance(status, dict) or not isinstance(status.get("name"), str):
        return None
    if published is None:
        return None
    return ObservedDataset(
        uid=item["dataset_uid"],
        published=published,
        status=status["name"],
        dataset_id=_text(item.get("dataset_id")),
        since=_text(status.get("since")),
    )


def needs_status_read(entry: DesiredDataset, observed: ObservedDataset) -> bool:
    """Tell whether the listing's view of a dataset is not enough to plan it."""
    in_sync = observed.published == (entry.state == PUBLISHED)
    return not in_sync or observed.status in FAILED_STATUSES


def read_status(
    client: Client,
    uid: str,
    item: dict[str, Any] | None,
    *,
    expand_user: bool = False,
) -> Observation:
    """Read one dataset's status; a missing or unreadable dataset is reported."""
    try:
        body = client.get_status(uid, expand_user=expand_user)
    except ApiError as error:
        if error.status_code in (401, 403):
            raise
        return Unobservable(uid, error.status_code == 404, str(error))
    published = body.get("published")
    if not isinstance(published, bool):
        return Unobservable(uid, False, f"status of {uid} has no published flag")
    return ObservedDataset(
        uid=uid,
        published=published,
        status=str(body["name"]),
        dataset_id=_text(item.get("dataset_id")) if item else None,
        since=_text(body.get("since")),
        message=_text(body.get("message")),
        user=_user_name(body.get("user")),
    )


def _listed_published(item: dict[str, Any]) -> bool | None:
    metas = item.get("metas")
    publishing = metas.get("publishing") if isinstance(metas, dict) else None
    value = publishing.get("published") if isinstance(publishing, dict) else None
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _user_name(value: Any) -> str | None:
    if isinstance(value, dict):
        return _text(value.get("username"))
    return _text(value)


def desired_datasets(
    manifest: Manifest,
    *,
    select: Callable[[str], bool] | None = None,
    known: History | None = None,
) -> list[DesiredDataset]:
    """List the manifest's desired states, with protections and actions under way."""
    known = known or History()
    with paused_gc():
        return [
            DesiredDataset(
                entry.uid,
                entry.state,
                entry.dataset_id,
                protected=entry.uid in known.protected,
                last_action=known.last_actions.get(entry.uid),
            )
            for entry in manifest.datasets
            if select is None or select(entry.uid)
        ]


def plan_manifest(
    client: Client,
    manifest: Manifest,
    *,
    parallelism: int = 8,
    select: Callable[[str], bool] | None = None,
    expand_user: bool = False,
    known: History | None = None,
) -> Plan:
    """Read the portal's state of the manifest's datasets and plan them.

    `select` keeps the uids it returns true for; the others are left alone.
    `known` brings the protections and actions under way from the state file.
    """
    desired = desired_datasets(manifest, select=select, known=known)
    observed, unmanaged = observe(
        client,
        desired,
        managed=[entry.uid for entry in manifest.datasets],
        parallelism=parallelism,
        expand_user=expand_user,
    )
    plan = build_plan(client.domain, manifest.digest, desired, observed)
    return replace(plan, base_url=client.base_url, unmanaged=tuple(unmanaged))
