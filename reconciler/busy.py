"""The --on-busy policies: apply's handling of a dataset busy when it must act."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from reconciler.apply import (
    FAILED,
    IN_SYNC,
    SKIPPED,
    SUBMITTED,
    ActionResult,
    send_action,
    skip_busy,
)
from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.observe import STOPPING
from reconciler.plan import (
    PROTECTED,
    PUBLISHED,
    UNPUBLISHED,
    DesiredDataset,
    PlanItem,
    plan_item,
)
from reconciler.state import StateFile
from reconciler.waiting import wait_until_settled

log = logging.getLogger(__name__)

POLICIES = ("skip", "wait", "abort")
BusyHandler = Callable[[PlanItem], ActionResult]


def busy_handler(
    policy: str, client: Client, state: StateFile, *, timeout: float
) -> BusyHandler:
    """Return the handler of busy datasets for an --on-busy policy."""
    if policy == "skip":
        return skip_busy

    def wait(item: PlanItem) -> ActionResult:
        return wait_then_act(client, state, item, timeout)

    def abort(item: PlanItem) -> ActionResult:
        # A protected dataset is never unpublished, so its publish is not
        # aborted for that either.
        if not aborts_a_publish(item) or item.uid in state.protected:
            return skip_busy(item)
        return abort_then_unpublish(client, state, item, timeout)

    return wait if policy == "wait" else abort


def aborts_a_publish(item: PlanItem) -> bool:
    """Tell whether the dataset must be unpublished while a publish runs."""
    return (
        item.desired == UNPUBLISHED
        and item.heading == PUBLISHED
        and item.status in ("queued", "processing")
    )


def wait_then_act(
    client: Client, state: StateFile, item: PlanItem, timeout: float
) -> ActionResult:
    """Wait for the dataset to settle, then plan it again and act if needed."""
    settled = wait_until_settled(client, [item.uid], timeout=timeout)
    observed = settled.observed.get(item.uid)
    if observed is None:
        detail = f"still busy after waiting {timeout:g}s: {item.reason}"
        return ActionResult(item.uid, "none", SKIPPED, detail=detail)
    desired = DesiredDataset(
        item.uid,
        item.desired,
        item.dataset_id,
        protected=item.uid in state.protected,
    )
    again = plan_item(desired, observed)
    if again.is_action:
        return send_action(client, state, again)
    if again.kind == PROTECTED:
        return ActionResult(item.uid, "none", SKIPPED, detail=again.reason)
    return ActionResult(item.uid, "none", IN_SYNC, detail=f"now {again.reason}")


def abort_then_unpublish(
    client: Client, state: StateFile, item: PlanItem, timeout: float
) -> ActionResult:
    """Abort the publish under way, wait for it to stop, then unpublish."""
    if STOPPING.is_set():
        return ActionResult(item.uid, "none", SKIPPED, detail="run interrupted")
    state.record_intent(item.uid, "abort_processing")
    try:
        job_id = client.abort_processing(item.uid)
    except ApiError as error:
        state.record_result(item.uid, job_id=None, error=str(error))
        return ActionResult(item.uid, "abort_processing", FAILED, detail=str(error))
    state.record_result(item.uid, job_id=job_id)
    log.info("abort_processing %s: job %s", item.uid, job_id)
    result = wait_then_act(client, state, item, timeout)
    aborted = f"aborted the publish under way (job {job_id or 'unknown'})"
    if result.outcome == SUBMITTED:
        return ActionResult(
            item.uid, result.action, SUBMITTED, job_id=result.job_id, detail=aborted
        )
    if result.outcome == IN_SYNC:
        detail = f"{aborted}; {result.detail}"
        return ActionResult(
            item.uid, "abort_processing", SUBMITTED, job_id=job_id, detail=detail
        )
    return replace(result, detail=f"{aborted}; then {result.detail}")
