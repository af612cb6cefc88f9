"""Carry out a plan's actions and record each job id in the state file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.observe import from_listing, parallel_map, read_status
from reconciler.plan import (
    PUBLISH,
    ObservedDataset,
    Plan,
    PlanItem,
    Unobservable,
    normalize_status,
    state_name,
)
from reconciler.state import StateFile

log = logging.getLogger(__name__)

# Outcomes of one plan action.
SUBMITTED = "submitted"
FAILED = "failed"
STALE = "stale"
ALREADY_APPLIED = "already_applied"
DRY_RUN = "dry_run"


@dataclass(frozen=True)
class ActionResult:
    """The outcome of one plan item's action."""

    uid: str
    action: str
    outcome: str
    job_id: str | None = None
    detail: str | None = None
    status_after: str | None = None
    published_after: bool | None = None

    @property
    def succeeded(self) -> bool:
        """Tell whether the action is done or was accepted by the portal."""
        return self.outcome in (SUBMITTED, ALREADY_APPLIED, DRY_RUN)


def apply_plan(
    plan: Plan,
    client: Client,
    state: StateFile | None,
    *,
    dry_run: bool = False,
    parallelism: int = 8,
    plan_id: str | None = None,
) -> list[ActionResult]:
    """Send each action of the plan; return one result per action, in plan order.

    With a plan_id (a saved plan), each dataset is read again first and its
    action sent only if the dataset is still in the state the plan observed.
    """
    actions = plan.actions
    if dry_run:
        return [ActionResult(item.uid, item.kind, DRY_RUN) for item in actions]
    if state is None:
        raise ValueError("a state file is required unless dry_run is set")

    def run(item: PlanItem) -> ActionResult:
        if plan_id is not None:
            refusal = check_still_planned(client, state, item, plan_id)
            if refusal is not None:
                return refusal
        return send_action(client, state, item, plan_id)

    results = parallel_map(run, actions, parallelism)
    acted = [result.uid for result in results if result.outcome == SUBMITTED]
    after = read_after(client, acted, parallelism)
    for uid, (status, published) in after.items():
        state.record_observed(uid, status, published)
    state.save()
    return [_with_status(result, after.get(result.uid)) for result in results]


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
    was = _describe(item.published, item.status)
    now = _describe(observation.published, normalize_status(observation.status))
    detail = f"live state moved since the plan: was {was}, now {now}"
    return ActionResult(item.uid, item.kind, STALE, detail=detail)


def send_action(
    client: Client, state: StateFile, item: PlanItem, plan_id: str | None = None
) -> ActionResult:
    """Record the intent, send the request, then record its job id or error."""
    state.record_intent(item.uid, item.kind, plan_id=plan_id)
    send = client.publish if item.kind == PUBLISH else client.unpublish
    try:
        job_id = send(item.uid)
    except ApiError as error:
        log.warning("%s %s failed: %s", item.kind, item.uid, error)
        state.record_result(item.uid, job_id=None, error=str(error))
        return ActionResult(item.uid, item.kind, FAILED, detail=str(error))
    log.info("%s %s: job %s", item.kind, item.uid, job_id)
    state.record_result(item.uid, job_id=job_id)
    return ActionResult(item.uid, item.kind, SUBMITTED, job_id=job_id)


def read_after(
    client: Client, uids: Sequence[str], parallelism: int
) -> dict[str, tuple[str, bool]]:
    """Read the status of the datasets just acted on: listing first, then status."""
    if not uids:
        return {}
    wanted = set(uids)
    after: dict[str, tuple[str, bool]] = {}
    try:
        for item in client.list_datasets():
            observed = from_listing(item) if item.get("dataset_uid") in wanted else None
            if observed is not None:
                after[observed.uid] = (observed.status, observed.published)
        missing = [uid for uid in uids if uid not in after]
        for observation in parallel_map(
            lambda uid: read_status(client, uid, None), missing, parallelism
        ):
            if isinstance(observation, ObservedDataset):
                after[observation.uid] = (observation.status, observation.published)
    except ApiError as error:
        # The actions are done and recorded; the status is only informative.
        log.warning("could not read the status after the actions: %s", error)
    return after


def _unchanged(item: PlanItem, observation: ObservedDataset) -> bool:
    return (
        observation.published == item.published
        and normalize_status(observation.status) == item.status
    )


def _describe(published: bool | None, status: str | None) -> str:
    return f"{state_name(published)} ({status})"


def _with_status(result: ActionResult, after: tuple[str, bool] | None) -> ActionResult:
    if after is None:
        return result
    return replace(result, status_after=after[0], published_after=after[1])
