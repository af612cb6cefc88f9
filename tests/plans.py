"""A plan with every kind of item, built from plain values, for rendering tests."""

from __future__ import annotations

from reconciler.plan import (
    DesiredDataset,
    ObservedDataset,
    Plan,
    UnmanagedDataset,
    Unobservable,
    build_plan,
)

SINCE = "2026-12-01T08:00:00+00:00"


def every_kind_plan() -> Plan:
    """Return a plan holding each kind of item once, and one unmanaged dataset."""
    desired = [
        DesiredDataset("da_pub001", "published", "roads"),
        DesiredDataset("da_pub002", "published", "bridges"),
        DesiredDataset("da_unp003", "unpublished", "budget-2019"),
        DesiredDataset("da_syn004", "published", "trees"),
        DesiredDataset("da_bad005", "published", "chargers"),
        DesiredDataset("da_bsy006", "published", "waste"),
        DesiredDataset("da_bsy007", "published", "noise"),
        DesiredDataset("da_gone08", "unpublished", "old-works"),
        DesiredDataset("da_unr009", "published"),
        DesiredDataset("da_idw010", "published", "bus-stops"),
    ]
    observed = {
        "da_pub001": ObservedDataset("da_pub001", False, "idle", "roads"),
        "da_pub002": ObservedDataset(
            "da_pub002", False, "error", "bridges", message="source | timed out"
        ),
        "da_unp003": ObservedDataset("da_unp003", True, "idle", "budget-2019"),
        "da_syn004": ObservedDataset("da_syn004", True, "idle", "trees"),
        "da_bad005": ObservedDataset(
            "da_bad005", True, "limit_reached", "chargers", message="record limit"
        ),
        "da_bsy006": ObservedDataset("da_bsy006", True, "processing", "waste", SINCE),
        "da_bsy007": ObservedDataset("da_bsy007", True, "deleting", "noise", SINCE),
        "da_gone08": Unobservable("da_gone08", True, "dataset da_gone08 not found"),
        "da_unr009": Unobservable("da_unr009", False, "GET failed: HTTP 503"),
        "da_idw010": ObservedDataset("da_idw010", True, "idle", "transit-stops"),
    }
    plan = build_plan("data.example.invalid", "sha256:" + "0" * 64, desired, observed)
    return Plan(
        plan.domain,
        plan.manifest_digest,
        plan.items,
        base_url="https://data.example.invalid/api/management/v2",
        unmanaged=(UnmanagedDataset("da_xtra11", "events", True),),
    )
