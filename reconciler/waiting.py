"""Poll datasets until their jobs settle, with few requests and a growing interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.observe import STOPPING, from_listing, parallel_map, read_status
from reconciler.plan import FAILED_STATUSES, SETTLED_STATUSES, ObservedDataset

log = logging.getLogger(__name__)

FIRST_INTERVAL = 0.5
INTERVAL_FACTOR = 1.5
MAX_INTERVAL = 15.0
# Above this many datasets to poll, one listing page of 100 costs less than
# reading each status.
LISTING_THRESHOLD = 10


@dataclass(frozen=True)
class Settled:
    """The datasets that settled, and those still busy when time ran out."""

    observed: dict[str, ObservedDataset]
    timed_out: frozenset[str]


def wait_until_settled(
    client: Client,
    uids: Collection[str],
    *,
    timeout: float,
    parallelism: int = 8,
) -> Settled:
    """Poll until every dataset is idle, error or limit_reached, or timeout passes."""
    pending = set(uids)
    settled: dict[str, ObservedDataset] = {}
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL
    while pending:
        for uid, observed in read_current(client, pending, parallelism).items():
            if observed.status in SETTLED_STATUSES:
                settled[uid] = observed
                pending.discard(uid)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        log.info("%d datasets still busy; next check in %.1fs", len(pending), interval)
        if STOPPING.wait(min(interval, remaining)):
            break
        interval = min(interval * INTERVAL_FACTOR, MAX_INTERVAL)
    return Settled(settled, frozenset(pending))


def read_current(
    client: Client, uids: Collection[str], parallelism: int
) -> dict[str, ObservedDataset]:
    """Read the status of some datasets: the listing when many, else one by one.

    The listing carries no error message, so failed runs are read one by one.
    """
    found: dict[str, ObservedDataset] = {}
    if len(uids) > LISTING_THRESHOLD:
        try:
            for item in client.list_datasets():
                observed = (
                    from_listing(item) if item.get("dataset_uid") in uids else None
                )
                if observed is not None and observed.status not in FAILED_STATUSES:
                    found[observed.uid] = observed
        except ApiError as error:
            log.warning("could not read the listing while waiting: %s", error)
    missing = [uid for uid in uids if uid not in found]
    reads = parallel_map(
        lambda uid: read_status(client, uid, None), missing, parallelism
    )
    for observation in reads:
        if isinstance(observation, ObservedDataset):
            found[observation.uid] = observation
    return found
