"""Render plans and apply results for people reading a terminal or a CI log."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.apply import ActionResult
from reconciler.plan import BUSY, NONE, NOT_FOUND, PUBLISH, UNPUBLISH, Plan, PlanItem

LABELS = {
    PUBLISH: "+ publish",
    UNPUBLISH: "- unpublish",
    BUSY: "~ busy",
    NOT_FOUND: "? not found",
    NONE: "= unchanged",
}
LABEL_WIDTH = 13


def item_label(item: PlanItem) -> str:
    """Return the marker and word that open an item's line."""
    if item.unhealthy:
        return "! unhealthy"
    return LABELS.get(item.kind, "? unreadable")


def item_name(uid: str, dataset_id: str | None) -> str:
    """Name a dataset by uid, with its dataset id when known."""
    return f"{uid} ({dataset_id})" if dataset_id and dataset_id != uid else uid


def render_plan(plan: Plan, *, show_unchanged: bool = False) -> str:
    """Render a plan: one line per dataset that needs attention, then a summary."""
    lines = [f"Plan for {plan.domain}: {len(plan.items)} datasets in the manifest"]
    shown = [
        item
        for item in plan.items
        if show_unchanged or item.kind != NONE or item.unhealthy
    ]
    if shown:
        lines.append("")
    for item in shown:
        name = item_name(item.uid, item.dataset_id)
        lines.append(f"{item_label(item):<{LABEL_WIDTH}} {name}: {item.reason}")
    warnings = [
        f"warning: {item.uid}: {warning}"
        for item in plan.items
        for warning in item.warnings
    ]
    if warnings:
        lines.append("")
        lines.extend(warnings)
    lines.append("")
    lines.append(plan.summary())
    return "\n".join(lines)


def render_results(results: Sequence[ActionResult], domain: str) -> str:
    """Render what apply did, one line per action, then the totals."""
    dry_run = any(result.dry_run for result in results)
    if not results:
        return f"Nothing to apply to {domain}."
    verb = "Would send" if dry_run else "Sent"
    lines = [f"{verb} {len(results)} actions to {domain}", ""]
    for result in results:
        lines.append(_result_line(result))
    failed = sum(1 for result in results if not result.succeeded)
    lines.append("")
    if dry_run:
        lines.append(f"Dry run: {len(results)} actions shown, no request sent.")
    else:
        lines.append(f"{len(results) - failed} succeeded, {failed} failed")
    return "\n".join(lines)


def _result_line(result: ActionResult) -> str:
    head = f"{result.action:<10} {result.uid}"
    if result.dry_run:
        return f"  {head}: would be sent"
    if result.error is not None:
        return f"  {head}: FAILED: {result.error}"
    line = f"  {head}: job {result.job_id}"
    if result.status_after is not None:
        state = "published" if result.published_after else "unpublished"
        line += f", now {result.status_after} ({state})"
    return line
