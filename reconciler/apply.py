"""Carry out a plan's actions and record each job id in the state file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reconciler.client import Client
from reconciler.errors import ApiError
from reconciler.observe import from_listing, parallel_map, read_status
from reconciler.plan import PUBLISH, ObservedDataset, Plan, PlanItem
from reconciler.state import StateFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    """The outcome of one plan item's action."""

    uid: str
    action: str
    job_id: str | None = None
    error: str | None = None
    dry_run: bool = False
    status_after: str | None = None
    published_after: bool | None = None

    @property
    def succeeded(self) -> bool:
        """Tell whether the request was accepted (or would be, in a dry run)."""
        return self.error is None


def apply_plan(
    plan: Plan,
    client: Client,
    state: StateFile | None,
    *,
    dry_run: bool = False,
    parallelism: int = 8,
) -> list[ActionResult]:
    """Send each action of the plan, in plan order; return one result per action."""
    actions = plan.actions
    if dry_run:
        return [ActionResult(item.uid, item.kind, dry_run=True) for item in actions]
    if state is None:
        raise ValueError("a state file is required unless dry_run is set")

    def run(item: PlanItem) -> ActionResult:
        return send_action(client, state, item)

    results = parallel_map(run, actions, parallelism)
    acted = [result.uid for result in results if result.succeeded]
    after = read_after(client, acted, parallelism)
    for uid, (status, published) in after.items():
        state.record_observed(uid, status, published)
    state.save()
    return [_with_status(result, after.get(result.uid)) for result in results]


def send_action(client: Client, state: StateFile, item: PlanItem) -> ActionResult:
    """Record the intent, send the request, then record its job id or error."""
    state.record_intent(item.uid, item.kind)
    send = client.publish if item.kind == PUBLISH else client.unpublish
    try:
        job_id = send(item.uid)
    except ApiError as error:
        log.warning("%s %s failed: %s", item.kind, item.uid, error)
        state.record_result(item.uid, job_id=None, error=str(error))
        return ActionResult(item.uid, item.kind, error=str(error))
    log.info("%s %s: job %s", item.kind, item.uid, job_id)
    state.record_result(item.uid, job_id=job_id)
    return ActionResult(item.uid, item.kind, job_id=job_id)


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


def _with_status(result: ActionResult, after: tuple[str, bool] | None) -> ActionResult:
    if after is None:
        return result
    return replace(result, status_after=after[0], published_after=after[1])
