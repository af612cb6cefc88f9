"""apply --wait: follow the jobs just submitted until they settle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from reconciler.apply import SUBMITTED, ActionResult
from reconciler.client import Client
from reconciler.plan import FAILED_STATUSES, PUBLISHED, ObservedDataset, state_name
from reconciler.state import StateFile
from reconciler.waiting import wait_until_settled

# Outcomes of a followed job.
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_TIMED_OUT = "timed_out"


def follow_jobs(
    client: Client,
    state: StateFile,
    results: Sequence[ActionResult],
    plan_desired: dict[str, str],
    *,
    timeout: float,
) -> list[ActionResult]:
    """Poll the submitted datasets until they settle; record and return how."""
    uids = [result.uid for result in results if result.outcome == SUBMITTED]
    settled = wait_until_settled(client, uids, timeout=timeout)
    followed = []
    for result in results:
        if result.outcome != SUBMITTED:
            followed.append(result)
            continue
        observed = settled.observed.get(result.uid)
        outcome, detail = job_outcome(observed, plan_desired[result.uid], timeout)
        state.record_settled(result.uid, outcome, detail)
        followed.append(replace(result, job_outcome=outcome, job_detail=detail))
    state.save()
    return followed


def job_outcome(
    observed: ObservedDataset | None, desired: str, timeout: float
) -> tuple[str, str | None]:
    """Classify a job from its settled status, with the reason when it failed."""
    if observed is None:
        return JOB_TIMED_OUT, f"still running after {timeout:g}s; outcome unknown"
    if observed.status in FAILED_STATUSES:
        message = observed.message or "no message"
        return JOB_FAILED, f"ended in {observed.status}: {message}"
    if observed.published != (desired == PUBLISHED):
        now = state_name(observed.published)
        return JOB_FAILED, f"settled {now}, not {desired}"
    return JOB_SUCCEEDED, None
