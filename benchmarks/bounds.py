"""The lower bounds that latency sets on the wall time of each client.

A request takes at least the simulated latency, and a request that needs the
response of another cannot overlap it. Listing page 1 gives the total, so the
other pages follow it. Status reads need the listing, and writes need the
reads. Within each step, at most `parallelism` requests are in flight.
"""

from __future__ import annotations

import math

from reconciler.client import PAGE_SIZE


def listing_pages(datasets: int) -> int:
    """Count the listing pages: one per 100 datasets, and at least one."""
    return max(1, math.ceil(datasets / PAGE_SIZE))


def listing_rounds(datasets: int, parallelism: int) -> int:
    """Count the round trips of a listing: page 1, then the others in parallel."""
    return 1 + math.ceil((listing_pages(datasets) - 1) / parallelism)


def plan_bound(
    latency: float, parallelism: int, datasets: int, reads: int
) -> dict[str, float]:
    """Return the fewest requests of a plan and the time their latency takes."""
    rounds = listing_rounds(datasets, parallelism) + math.ceil(reads / parallelism)
    return {
        "requests": listing_pages(datasets) + reads,
        "wall_seconds": latency * rounds,
    }


def apply_bound(
    latency: float, parallelism: int, datasets: int, changes: int
) -> dict[str, float]:
    """Return the same for apply: a plan, the writes, and a listing after them."""
    bound = plan_bound(latency, parallelism, datasets, changes)
    writes = math.ceil(changes / parallelism)
    rounds_after = writes + listing_rounds(datasets, parallelism)
    return {
        "requests": bound["requests"] + changes + listing_pages(datasets),
        "wall_seconds": bound["wall_seconds"] + latency * rounds_after,
    }


def naive_bound(latency: float, requests_sent: int) -> dict[str, float]:
    """Return the naive client's requests and time: one request after another."""
    return {"requests": requests_sent, "wall_seconds": latency * requests_sent}
