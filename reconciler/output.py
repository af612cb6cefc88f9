"""Render plans and apply results as text, for a terminal or a CI log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import click

from reconciler.apply import (
    ALREADY_APPLIED,
    DRY_RUN,
    FAILED,
    IN_SYNC,
    SKIPPED,
    STALE,
    SUBMITTED,
    ActionResult,
)
from reconciler.plan import (
    BUSY,
    NONE,
    NOT_FOUND,
    PROTECTED,
    PUBLISH,
    UNPUBLISH,
    UNREADABLE,
    Plan,
    PlanItem,
    state_name,
)

LABELS = {
    PUBLISH: "+ publish",
    UNPUBLISH: "- unpublish",
    BUSY: "~ busy",
    PROTECTED: "# protected",
    NOT_FOUND: "? not found",
    NONE: "= unchanged",
}
COLORS = {
    PUBLISH: "green",
    UNPUBLISH: "red",
    BUSY: "yellow",
    PROTECTED: "cyan",
    NOT_FOUND: "magenta",
    "unhealthy": "magenta",
}
LABEL_WIDTH = 13
RESULT_WORDS = {
    SUBMITTED: "submitted",
    FAILED: "failed",
    SKIPPED: "skipped",
    STALE: "refused as stale",
    ALREADY_APPLIED: "already applied",
    IN_SYNC: "in sync after waiting",
}
JOB_WORDS = {"succeeded": "succeeded", "failed": "failed", "timed_out": "timed out"}


def item_label(item: PlanItem) -> str:
    """Return the marker and word that open an item's line."""
    if item.unhealthy:
        return "! unhealthy"
    return LABELS.get(item.kind, "? unreadable")


def plural(count: int, noun: str) -> str:
    """Return '1 dataset' or '3 datasets'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def item_reason(item: PlanItem) -> str:
    """Explain an item on one line; an action's starts with the change it makes."""
    reason = " ".join(item.reason.split())
    if not item.is_action:
        return reason
    change = f"{item.current} -> {item.desired}"
    return f"{change}; {reason}" if reason else change


def item_name(uid: str, dataset_id: str | None) -> str:
    """Name a dataset by uid, with its dataset id when known."""
    return f"{uid} ({dataset_id})" if dataset_id and dataset_id != uid else uid


def render_plan(
    plan: Plan,
    *,
    show_unchanged: bool = False,
    color: bool = False,
) -> str:
    """Render a plan: one line per dataset that needs attention, then a summary."""
    count = plural(len(plan.items), "dataset")
    lines = [f"Plan for {plan.domain}: {count} in the manifest"]
    shown = [
        item
        for item in plan.items
        if show_unchanged or item.kind != NONE or item.unhealthy
    ]
    if shown:
        lines.append("")
    lines.extend(_item_line(item, color) for item in shown)
    warnings = [
        f"warning: {item.uid}: {warning}"
        for item in plan.items
        for warning in item.warnings
    ]
    if warnings:
        lines += ["", *warnings]
    if plan.unmanaged:
        lines += ["", *unmanaged_lines(plan)]
    lines += ["", click.style(plan.summary(), bold=True) if color else plan.summary()]
    return "\n".join(lines)


def unmanaged_lines(plan: Plan) -> list[str]:
    """List the portal's datasets that no manifest declares."""
    count = plural(len(plan.unmanaged), "dataset")
    lines = [f"{count} on the portal in no manifest:"]
    for dataset in plan.unmanaged:
        name = item_name(dataset.uid, dataset.dataset_id)
        lines.append(f"  {name}: {state_name(dataset.published)}")
    return lines


def render_drift(plan: Plan) -> str:
    """Render the managed datasets whose live state differs from the manifest."""
    drifted = [item for item in plan.items if item.is_action]
    managed = plural(len(plan.items), "managed dataset")
    lines = [
        f"Drift on {plan.domain}: {len(drifted)} of {managed} differ from the manifest"
    ]
    if drifted:
        lines.append("")
    for item in drifted:
        line = (
            f"  {item_name(item.uid, item.dataset_id)}: {item.current} on the "
            f"portal, {item.desired} in the manifest"
        )
        if item.since:
            line += f"; since {item.since}"
        if item.user:
            line += f" by {item.user}"
        lines.append(line)
    unobservable = [item for item in plan.items if item.kind in (NOT_FOUND, UNREADABLE)]
    if unobservable:
        lines.append("")
        lines += [_item_line(item, color=False) for item in unobservable]
    if plan.unmanaged:
        lines += ["", *unmanaged_lines(plan)]
    return "\n".join(lines)


def render_results(
    results: Sequence[ActionResult], domain: str, *, dry_run: bool = False
) -> str:
    """Render what apply did, one line per action, then the totals."""
    if not results:
        return f"Nothing to apply to {domain}."
    if dry_run:
        actions = [result for result in results if result.outcome == DRY_RUN]
        lines = [f"Would send {plural(len(actions), 'action')} to {domain}", ""]
        lines += [
            f"  {result.action:<10} {result.uid}"
            if result.outcome == DRY_RUN
            else _result_line(result)
            for result in results
        ]
        return "\n".join([*lines, "", "Dry run: no publish or unpublish was sent."])

    lines = [f"Applied the plan to {domain}", ""]
    lines.extend(_result_line(result) for result in results)
    counts = Counter(result.outcome for result in results)
    totals = ", ".join(
        f"{counts[key]} {word}"
        for key, word in RESULT_WORDS.items()
        if counts[key] or key in (SUBMITTED, FAILED)
    )
    jobs = Counter(result.job_outcome for result in results if result.job_outcome)
    if jobs:
        totals += "; " + ", ".join(
            f"{plural(jobs[key], 'job')} {word}" for key, word in JOB_WORDS.items()
        )
    return "\n".join([*lines, "", totals])


def _item_line(item: PlanItem, color: bool) -> str:
    label = f"{item_label(item):<{LABEL_WIDTH}}"
    if color:
        key = "unhealthy" if item.unhealthy else item.kind
        label = click.style(label, fg=COLORS.get(key))
    return f"{label} {item_name(item.uid, item.dataset_id)}: {item_reason(item)}"


def _result_line(result: ActionResult) -> str:
    head = f"  {result.action:<10} {result.uid}"
    if result.outcome == SUBMITTED:
        line = f"{head}: job {result.job_id or 'unknown'}"
        if result.detail:
            line += f"; {result.detail}"
        if result.job_outcome is not None:
            line += f", {JOB_WORDS[result.job_outcome]}"
            line += f": {result.job_detail}" if result.job_detail else ""
        elif result.status_after is not None:
            state = state_name(result.published_after)
            line += f", now {result.status_after} ({state})"
        return line
    if result.outcome == SKIPPED:
        return f"{head}: skipped, {result.detail}"
    if result.outcome == IN_SYNC:
        return f"{head}: {result.detail}"
    if result.outcome == ALREADY_APPLIED:
        job = f" (job {result.job_id})" if result.job_id else ""
        return f"{head}: already applied{job}, {result.detail}"
    word = "REFUSED" if result.outcome == STALE else "FAILED"
    return f"{head}: {word}: {result.detail}"
