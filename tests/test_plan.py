from __future__ import annotations

import pytest

from reconciler.plan import (
    BUSY,
    NONE,
    NOT_FOUND,
    PUBLISH,
    UNPUBLISH,
    UNREADABLE,
    DesiredDataset,
    ObservedDataset,
    Unobservable,
    build_plan,
    plan_item,
)

UID = "da_abc123"

# desired state, published flag, status name -> kind, heading, unhealthy
TABLE = [
    ("published", True, "idle", NONE, None, False),
    ("published", False, "idle", PUBLISH, None, False),
    ("unpublished", True, "idle", UNPUBLISH, None, False),
    ("unpublished", False, "idle", NONE, None, False),
    ("published", True, "error", NONE, None, True),
    ("published", True, "limit_reached", NONE, None, True),
    ("published", False, "error", PUBLISH, None, False),
    ("published", False, "limit_reached", PUBLISH, None, False),
    ("unpublished", True, "error", UNPUBLISH, None, False),
    ("unpublished", False, "error", NONE, None, False),
    ("unpublished", True, "limit_reached", UNPUBLISH, None, False),
    ("published", False, "queued", BUSY, "published", False),
    ("published", True, "queued", BUSY, None, False),
    ("unpublished", False, "queued", BUSY, "published", False),
    ("unpublished", True, "queued", BUSY, None, False),
    ("published", True, "processing", BUSY, "published", False),
    ("published", False, "processing", BUSY, "published", False),
    ("unpublished", True, "processing", BUSY, "published", False),
    ("unpublished", True, "deleting", BUSY, "unpublished", False),
    ("published", True, "deleting", BUSY, "unpublished", False),
    ("published", True, "aborting_processing", BUSY, None, False),
    ("unpublished", False, "aborting_processing", BUSY, None, False),
    ("published", True, "processing_all_dataset_data", BUSY, "published", False),
    ("unpublished", True, "deleting_dataset", BUSY, "unpublished", False),
    ("published", True, "mystery", UNREADABLE, None, False),
]


@pytest.mark.parametrize(
    ("desired", "published", "status", "kind", "heading", "unhealthy"),
    TABLE,
    ids=[f"{row[0]}-{'pub' if row[1] else 'unpub'}-{row[2]}" for row in TABLE],
)
def test_plan_item_table(
    desired: str,
    published: bool,
    status: str,
    kind: str,
    heading: str | None,
    unhealthy: bool,
) -> None:
    observed = ObservedDataset(UID, published, status, message="boom")
    item = plan_item(DesiredDataset(UID, desired), observed)
    assert item.kind == kind
    assert item.heading == heading
    assert item.unhealthy is unhealthy


def test_plan_item_publish_reason() -> None:
    item = plan_item(
        DesiredDataset(UID, "published"), ObservedDataset(UID, False, "idle")
    )
    assert item.reason == ""


def test_plan_item_publish_after_failure_gives_message() -> None:
    observed = ObservedDataset(UID, False, "error", message="source returned 404")
    item = plan_item(DesiredDataset(UID, "published"), observed)
    assert item.reason == "last run ended in error: source returned 404"


def test_plan_item_unpublish_warns_of_data_loss() -> None:
    item = plan_item(
        DesiredDataset(UID, "unpublished"), ObservedDataset(UID, True, "idle")
    )
    assert item.reason == (
        "unpublishing removes the records from the search "
        "API; realtime sources without recovery lose them"
    )


def test_plan_item_unhealthy_carries_message() -> None:
    observed = ObservedDataset(UID, True, "limit_reached", message="licence limit")
    item = plan_item(DesiredDataset(UID, "published"), observed)
    assert (
        item.reason == "published, but last run ended in limit_reached: licence limit"
    )


def test_plan_item_busy_reason_says_direction() -> None:
    observed = ObservedDataset(UID, True, "deleting", since="2026-12-01T10:00:00+00:00")
    item = plan_item(DesiredDataset(UID, "published"), observed)
    assert item.reason == (
        "deleting since 2026-12-01T10:00:00+00:00; heads to unpublished, "
        "not published: plan again once it settles"
    )


def test_plan_item_busy_towards_desired() -> None:
    observed = ObservedDataset(UID, False, "queued")
    item = plan_item(DesiredDataset(UID, "published"), observed)
    assert item.reason == "queued; heads to published, as desired"


def test_plan_item_id_mismatch_warns() -> None:
    observed = ObservedDataset(UID, True, "idle", dataset_id="transit-stops")
    item = plan_item(DesiredDataset(UID, "published", "bus-stops"), observed)
    assert item.kind == NONE
    assert item.warnings == (
        "the manifest says id 'bus-stops' but the portal reports 'transit-stops'",
    )


def test_plan_item_matching_id_has_no_warning() -> None:
    observed = ObservedDataset(UID, True, "idle", dataset_id="bus-stops")
    item = plan_item(DesiredDataset(UID, "published", "bus-stops"), observed)
    assert item.warnings == ()


def test_plan_item_not_found() -> None:
    missing = Unobservable(UID, True, "dataset da_abc123 does not exist")
    item = plan_item(DesiredDataset(UID, "published", "x"), missing)
    assert item.kind == NOT_FOUND
    assert item.reason == "dataset da_abc123 does not exist"


def test_plan_item_unreadable() -> None:
    item = plan_item(DesiredDataset(UID, "published"), Unobservable(UID, False, "503"))
    assert item.kind == UNREADABLE


def test_build_plan_keeps_manifest_order_and_summarises() -> None:
    desired = [
        DesiredDataset("da_c", "published"),
        DesiredDataset("da_a", "unpublished"),
        DesiredDataset("da_b", "published"),
        DesiredDataset("da_d", "published"),
        DesiredDataset("da_e", "published"),
        DesiredDataset("da_f", "published"),
    ]
    observed = {
        "da_a": ObservedDataset("da_a", True, "idle"),
        "da_b": ObservedDataset("da_b", True, "idle"),
        "da_c": ObservedDataset("da_c", False, "idle"),
        "da_d": ObservedDataset("da_d", True, "processing"),
        "da_e": ObservedDataset("da_e", True, "error"),
    }
    plan = build_plan("example.org", "sha256:0", desired, observed)
    assert [item.uid for item in plan.items] == [d.uid for d in desired]
    assert [item.uid for item in plan.actions] == ["da_c", "da_a"]
    assert plan.summary() == (
        "1 to publish, 1 to unpublish, 1 unchanged, 1 unhealthy, 1 busy, 1 unreadable"
    )
