"""The plan as JSON: the --format json output and the saved plan apply reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema

from reconciler import __version__
from reconciler.errors import PlanFileError
from reconciler.plan import PUBLISHED, Plan, PlanItem, UnmanagedDataset
from reconciler.schemas import load_schema
from reconciler.state import utc_now, write_atomic

PLAN_VERSION = 1
ITEM_FIELDS = (
    "uid",
    "dataset_id",
    "kind",
    "desired",
    "status",
    "since",
    "heading",
    "unhealthy",
    "message",
    "user",
    "reason",
)


def plan_to_dict(
    plan: Plan,
    *,
    state_path: Path | None = None,
    manifest_paths: Sequence[str] = (),
    manifest_facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe the plan in the versioned JSON format of plan.schema.json.

    `manifest_facts` adds what a saved plan needs of its manifest: the number
    of datasets it declares and the uids it protects or unprotects.
    """
    counts = plan.counts()
    body: dict[str, Any] = {
        "plan_version": PLAN_VERSION,
        "generator": f"ods-reconciler {__version__}",
        "created_at": utc_now(),
        "domain": plan.domain,
        "base_url": plan.base_url,
        "manifest_digest": plan.manifest_digest,
        "state_path": str(state_path) if state_path else None,
        "manifest_paths": list(manifest_paths),
        "summary": {
            "text": plan.summary(),
            "publish": counts["publish"],
            "unpublish": counts["unpublish"],
            "unchanged": counts["none"],
            "unhealthy": counts["unhealthy"],
            "busy": counts["busy"],
            "protected": counts["protected"],
            "not_found": counts["not_found"],
            "unreadable": counts["unreadable"],
        },
        "items": [_item_to_dict(item) for item in plan.items],
        "unmanaged": [
            {"uid": d.uid, "dataset_id": d.dataset_id, "published": d.published}
            for d in plan.unmanaged
        ],
    }
    body.update(manifest_facts or {})
    body["plan_id"] = plan_id(body)
    return body


def plan_id(body: dict[str, Any]) -> str:
    """Fingerprint the whole plan but its creation time, so an edit shows."""
    decided = {
        key: value
        for key, value in body.items()
        if key not in ("plan_id", "created_at")
    }
    text = json.dumps(decided, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def render_json(plan: Plan) -> str:
    """Render the plan as indented JSON."""
    return json.dumps(plan_to_dict(plan), indent=2) + "\n"


def save_plan(
    plan: Plan,
    path: Path,
    *,
    state_path: Path | None,
    manifest_paths: Sequence[str],
    manifest_facts: dict[str, Any],
) -> None:
    """Write the plan for a later apply, atomically."""
    body = plan_to_dict(
        plan,
        state_path=state_path,
        manifest_paths=manifest_paths,
        manifest_facts=manifest_facts,
    )
    try:
        write_atomic(path, json.dumps(body, indent=2) + "\n")
    except OSError as error:
        raise PlanFileError(
            f"cannot write the plan to {path}: {error.strerror}"
        ) from None


def is_saved_plan(path: Path) -> bool:
    """Tell whether a file given to apply is a saved plan rather than a manifest."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            start = handle.read(4096)
    except OSError:
        return False
    return b'"plan_version"' in start


def load_plan(path: Path) -> tuple[Plan, dict[str, Any]]:
    """Read a saved plan; return it and its JSON body."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanFileError(f"{path}: cannot read the saved plan: {error}") from None
    if not isinstance(body, dict) or body.get("plan_version") != PLAN_VERSION:
        version = body.get("plan_version") if isinstance(body, dict) else None
        raise PlanFileError(
            f"{path}: unknown plan version {version!r}, expected {PLAN_VERSION}"
        )
    validator = jsonschema.Draft202012Validator(load_schema("plan.schema.json"))
    problem = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if problem is not None:
        raise PlanFileError(f"{path}: invalid saved plan: {problem.message}")
    if body["plan_id"] != plan_id(body):
        raise PlanFileError(
            f"{path}: the saved plan was edited after it was made "
            "(its plan_id does not match its content); make a new plan"
        )
    return _plan_from_dict(body), body


def _item_to_dict(item: PlanItem) -> dict[str, Any]:
    data = {name: getattr(item, name) for name in ITEM_FIELDS}
    data["current"] = item.current
    data["warnings"] = list(item.warnings)
    return data


def _plan_from_dict(body: dict[str, Any]) -> Plan:
    items = []
    for data in body["items"]:
        fields = {name: data[name] for name in ITEM_FIELDS}
        current = data["current"]
        published = None if current is None else current == PUBLISHED
        items.append(
            PlanItem(**fields, published=published, warnings=tuple(data["warnings"]))
        )
    unmanaged = tuple(
        UnmanagedDataset(d["uid"], d["dataset_id"], d["published"])
        for d in body["unmanaged"]
    )
    return Plan(
        domain=body["domain"],
        manifest_digest=body["manifest_digest"],
        items=tuple(items),
        base_url=body["base_url"],
        unmanaged=unmanaged,
    )
