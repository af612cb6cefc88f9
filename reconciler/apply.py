"""Carry out a plan's actions and record each job id in the state file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.observe import STOPPING, parallel_map, read_status
from reconciler.plan import (
    BUSY,
    BUSY_STATUSES,
    PUBLISH,
    PUBLISHED,
    ObservedDataset,
    Plan,
    PlanItem,
    Unobservable,
    normalize_status,
    state_name,
)
from reconciler.state import UNKNOWN, StateFile
from reconciler.waiting import read_current

log = logging.getLogger(__name__)

# Outcomes of one plan item at apply.
SUBMITTED = "submitted"
FAILED = "failed"
STALE = "stale"
ALREADY_APPLIED = "already_applied"
SKIPPED = "skipped"
IN_SYNC = "in_sync"  # a busy dataset that reached its desired state while waited for
DRY_RUN = "dry_run"

# A write that failed in a way that leaves its fate unknown is sent again only
# after a status read shows it was not taken, and at most this many times.
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class ActionResult:
    """The outcome of one plan item at apply."""

    uid: str
    action: str
    outcome: str
    job_id: str | None = None
    detail: str | None = None
    status_after: str | None = None
    published_after: bool | None = None
    # Set by apply --wait: succeeded, failed or timed_out, and why.
    job_outcome: str | None = None
    job_detail: str | None = None

    @property
    def succeeded(self) -> bool:
        """Tell whether the action is done or was accepted by the portal."""
        if self.job_outcome is not None and self.job_outcome != "succeeded":
            return False
        return self.outcome in (SUBMITTED, ALREADY_APPLIED, IN_SYNC, DRY_RUN)


def apply_plan(
    plan: Plan,
    client: Client,
    state: StateFile | None,
    *,
    dry_run: bool = False,
    parallelism: int = 8,
    plan_id: str | None = None,
    handle_busy: Callable[[PlanItem], ActionResult | None] | None = None,
    on_done: Callable[[ActionResult], None] | None = None,
) -> list[ActionResult]:
    """Act on each item of the plan; return one result per item acted on or skipped.

    With a plan_id (a saved plan), each dataset is read again first and its
    action sent only if the dataset is still in the state the plan observed.
    `handle_busy` decides what becomes of a busy dataset that does not head to
    its desired state; by default it is skipped.
    """
    items = [item for item in plan.items if item.is_action or _left_undone(item)]
    if dry_run:
        return [_dry_run_result(item) for item in items]
    if state is None:
        raise ValueError("a state file is required unless dry_run is set")

    def run(item: PlanItem) -> ActionResult:
        if item.kind == BUSY:
            result = (handle_busy or skip_busy)(item)
        else:
            result = act(client, state, item, plan_id)
        if result is None:
            result = ActionResult(item.uid, item.kind, SKIPPED, detail=item.reason)
        if on_done is not None:
            on_done(result)
        return result

    results = parallel_map(run, items, parallelism)
    after = read_after(client, [r.uid for r in results if r.outcome == SUBMITTED])
    for uid, observed in after.items():
        state.record_observed(uid, observed.status, observed.published)
    state.save()
    return [_with_status(result, after.get(result.uid)) for result in results]


def act(
    client: Client, state: StateFile, item: PlanItem, plan_id: str | None
) -> ActionResult:
    """Send an item's action, after checking a saved plan still holds."""
    if STOPPING.is_set():
        return ActionResult(item.uid, item.kind, SKIPPED, detail="run interrupted")
    if plan_id is not None:
        refusal = check_still_planned(client, state, item, plan_id)
        if refusal is not None:
            return refusal
    return send_action(client, state, item, plan_id)


def skip_busy(item: PlanItem) -> ActionResult:
    """Leave a busy dataset alone and report it as skipped."""
    return ActionResult(item.uid, "none", SKIPPED, detail=f"busy: {item.reason}")


def check_still_planned(
    client: Client, state: StateFile, item: PlanItem, plan_id: str
) -> ActionResult | None:
    """Read a dataset again; return why its action must not be sent, if it must not."""
    observation = read_status(client, item.uid, None)
    if isinstance(observation, Unobservable):
        return ActionResult(item.uid, item.kind, FAILED, detail=observation.message)
    if _unchanged(item, observation):
        return None
    record = state.datasets.get(item.uid)
    if record is not None and record.get("plan_id") == plan_id:
        return ActionResult(
            item.uid,
            item.kind,
            ALREADY_APPLIED,
            job_id=record.get("job_id"),
            detail="sent by an earlier apply of this plan",
        )
    was = f"{state_name(item.published)} ({item.status})"
    now = f"{state_name(observation.published)} ({observation.status})"
    detail = f"live state moved since the plan: was {was}, now {now}"
    return ActionResult(item.uid, item.kind, STALE, detail=detail)


def send_action(
    client: Client, state: StateFile, item: PlanItem, plan_id: str | None = None
) -> ActionResult:
    """Record the intent, send the request, then record its job id or error.

    A failure that may have come after the portal acted (timeout, dropped
    connection, 5xx) is followed by a status read: if the action was taken, it
    is recorded as submitted and not sent again.
    """
    if STOPPING.is_set():
        return ActionResult(item.uid, item.kind, SKIPPED, detail="run interrupted")
    state.record_intent(item.uid, item.kind, plan_id=plan_id)
    send = client.publish if item.kind == PUBLISH else client.unpublish
    last_error = ""
    # NOTE: a request that timed out on our side may still reach the portal
    # after the status read below. Only an idempotency key could rule out the
    # second job then, and the Management API offers none.
    for _ in range(WRITE_ATTEMPTS):
        try:
            job_id = send(item.uid)
        except ApiError as error:
            if not error.ambiguous:
                return _record_failure(state, item, str(error))
            taken = action_taken(client, item)
            if taken is None:
                detail = (
                    f"{error}; its outcome is unknown: the status could not be read"
                )
                return _record_failure(state, item, detail, outcome=UNKNOWN)
            if taken:
                return _record_lost_answer(state, item, str(error))
            log.info(
                "%s %s was not taken after %s; sending again",
                item.kind,
                item.uid,
                error,
            )
            last_error = str(error)
            continue
        log.info("%s %s: job %s", item.kind, item.uid, job_id)
        state.record_result(item.uid, job_id=job_id)
        return ActionResult(item.uid, item.kind, SUBMITTED, job_id=job_id)
    return _record_failure(state, item, last_error)


def action_taken(client: Client, item: PlanItem) -> bool | None:
    """Tell whether the portal took an action whose response was lost, if known."""
    observation = read_status(client, item.uid, None)
    if not isinstance(observation, ObservedDataset):
        return None
    if normalize_status(observation.status) in BUSY_STATUSES:
        return True
    return observation.published == (item.desired == PUBLISHED)


def read_after(client: Client, uids: Sequence[str]) -> dict[str, ObservedDataset]:
    """Read the status of the datasets just acted on; the listing when many."""
    if not uids:
        return {}
    try:
        return read_current(client, set(uids), parallelism=client.pool_size)
    except ApiError as error:
        # The actions are done and recorded; the status is only informative.
        log.warning("could not read the status after the actions: %s", error)
        return {}


def _left_undone(item: PlanItem) -> bool:
    """Tell whether a busy dataset will not reach its desired state by itself."""
    return item.kind == BUSY and item.heading != item.desired


def _dry_run_result(item: PlanItem) -> ActionResult:
    if item.kind == BUSY:
        return ActionResult(item.uid, "none", SKIPPED, detail=f"busy: {item.reason}")
    return ActionResult(item.uid, item.kind, DRY_RUN)


def _record_failure(
    state: StateFile, item: PlanItem, detail: str, outcome: str | None = None
) -> ActionResult:
    log.warning("%s %s failed: %s", item.kind, item.uid, detail)
    state.record_result(item.uid, job_id=None, error=detail, outcome=outcome)
    return ActionResult(item.uid, item.kind, FAILED, detail=detail)


def _record_lost_answer(state: StateFile, item: PlanItem, error: str) -> ActionResult:
    detail = f"the answer was lost ({error}) but the portal shows the action under way"
    log.warning("%s %s: %s", item.kind, item.uid, detail)
    state.record_result(item.uid, job_id=None, error=None)
    return ActionResult(item.uid, item.kind, SUBMITTED, detail=detail)


def _unchanged(item: PlanItem, observation: ObservedDataset) -> bool:
    return (
        observation.published == item.published
        and normalize_status(observation.status) == item.status
    )


def _with_status(result: ActionResult, after: ObservedDataset | None) -> ActionResult:
    if after is None:
        return result
    return replace(result, status_after=after.status, published_after=after.published)
