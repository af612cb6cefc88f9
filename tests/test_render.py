"""Golden tests of the three plan renderings, and the Markdown size cap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from reconciler.markdown import MARKER, MAX_CHARS, render_markdown
from reconciler.output import render_drift, render_plan
from reconciler.plan import DesiredDataset, ObservedDataset, build_plan
from reconciler.planfile import plan_to_dict, render_json
from reconciler.schemas import load_schema
from tests.plans import every_kind_plan

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_render_text_golden() -> None:
    text = render_plan(every_kind_plan(), show_unchanged=True)
    check_golden("plan.txt", text + "\n")


def test_render_text_hides_unchanged_by_default() -> None:
    text = render_plan(every_kind_plan())
    assert "da_syn004" not in text
    assert "da_bad005" in text


def test_render_markdown_golden() -> None:
    check_golden("plan.md", render_markdown(every_kind_plan()))


def test_render_json_golden() -> None:
    body = json.loads(render_json(every_kind_plan()))
    body["created_at"] = "2026-12-04T00:00:00+00:00"
    check_golden("plan.json", json.dumps(body, indent=2) + "\n")


def test_render_json_matches_schema() -> None:
    body = json.loads(render_json(every_kind_plan()))
    jsonschema.validate(body, load_schema("plan.schema.json"))
    assert body["summary"]["text"] == every_kind_plan().summary()


def test_render_drift_lists_only_out_of_sync() -> None:
    desired = [
        DesiredDataset("da_a", "published", "a"),
        DesiredDataset("da_b", "published", "b"),
        DesiredDataset("da_c", "unpublished", "c"),
    ]
    observed = {
        "da_a": ObservedDataset(
            "da_a", False, "idle", "a", "2026-12-01T08:00:00+00:00", user="eve"
        ),
        "da_b": ObservedDataset("da_b", True, "processing", "b"),
        "da_c": ObservedDataset("da_c", False, "idle", "c"),
    }
    plan = build_plan("portal.example.invalid", "sha256:0", desired, observed)
    assert render_drift(plan) == (
        "Drift on portal.example.invalid: 1 of 3 managed datasets differ from the "
        "manifest\n"
        "\n"
        "  da_a (a): unpublished on the portal, published in the manifest; "
        "since 2026-12-01T08:00:00+00:00 by eve"
    )


@pytest.fixture(scope="module")
def huge_plan_markdown() -> str:
    count = 10_000
    desired = [
        DesiredDataset(f"da_{i:06d}", "published", f"dataset-{i}") for i in range(count)
    ]
    observed = {
        d.uid: ObservedDataset(d.uid, i % 2 == 0, "idle", d.dataset_id)
        for i, d in enumerate(desired)
    }
    plan = build_plan("portal.example.invalid", "sha256:0", desired, observed)
    return render_markdown(plan)


def test_render_markdown_capped_for_huge_plan(huge_plan_markdown: str) -> None:
    assert len(huge_plan_markdown) <= MAX_CHARS
    assert huge_plan_markdown.startswith(MARKER)
    assert "**5000 to publish, 0 to unpublish, 5000 unchanged**" in huge_plan_markdown


def test_render_markdown_counts_rows_left_out(huge_plan_markdown: str) -> None:
    shown = huge_plan_markdown.count("| publish | `da_") + huge_plan_markdown.count(
        "| published |\n"
    )
    left_out = 10_000 - shown
    assert left_out > 0
    assert huge_plan_markdown.endswith(
        f"\n_{left_out:,} rows were left out to keep this comment under "
        f"{MAX_CHARS:,} characters; `ods-reconcile plan` lists them all._\n"
    )


def test_plan_dict_holds_no_secret() -> None:
    body = plan_to_dict(every_kind_plan())
    text = json.dumps(body)
    assert "apikey" not in text.lower()
    assert "password" not in text.lower()
