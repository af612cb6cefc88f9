"""Compute the actions that bring observed datasets to their desired state.

The planner is pure: it takes plain values and returns plain values, so that a
plan can be built, tested and rendered without a portal.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

PUBLISHED = "published"
UNPUBLISHED = "unpublished"

SETTLED_STATUSES = frozenset({"idle", "error", "limit_reached"})
BUSY_STATUSES = frozenset({"queued", "processing", "deleting", "aborting_processing"})
FAILED_STATUSES = frozenset({"error", "limit_reached"})

# Plan item kinds. Only PUBLISH and UNPUBLISH send a request.
PUBLISH = "publish"
UNPUBLISH = "unpublish"
NONE = "none"
BUSY = "busy"
NOT_FOUND = "not_found"
UNREADABLE = "unreadable"
PROTECTED = "protected"
ACTIONS = (PUBLISH, UNPUBLISH)

UNPUBLISH_NOTE = (
    "unpublishing removes the records from the search API; "
    "realtime sources without recovery lose them"
)


PROTECTED_NOTE = (
    "published, but protected: never unpublished by this tool; "
    "set `protect: false` on its entry to lift the protection"
)


@dataclass(frozen=True)
class DesiredDataset:
    """The state the manifest requests for one dataset, and this tool's last action.

    `protected` datasets are never unpublished. `last_action` is the action the
    state file records as submitted and not yet seen to finish; it tells where
    a queued job heads when the portal's status alone cannot.
    """

    uid: str
    state: str
    dataset_id: str | None = None
    protected: bool = False
    last_action: str | None = None


@dataclass(frozen=True)
class ObservedDataset:
    """The state the portal reports for one dataset."""

    uid: str
    published: bool
    status: str
    dataset_id: str | None = None
    since: str | None = None
    message: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class Unobservable:
    """A dataset whose state could not be read: missing or unreadable."""

    uid: str
    not_found: bool
    message: str


Observation = ObservedDataset | Unobservable


@dataclass(frozen=True)
class UnmanagedDataset:
    """A dataset on the portal that no manifest declares; never acted on."""

    uid: str
    dataset_id: str | None
    published: bool | None


@dataclass(frozen=True)
class PlanItem:
    """One dataset's verdict: the action to take or why none is taken."""

    uid: str
    kind: str
    desired: str
    reason: str
    dataset_id: str | None = None
    published: bool | None = None
    status: str | None = None
    since: str | None = None
    heading: str | None = None
    unhealthy: bool = False
    message: str | None = None
    user: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def is_action(self) -> bool:
        """Tell whether applying this item sends a request."""
        return self.kind in ACTIONS

    @property
    def current(self) -> str | None:
        """Return the observed state in the manifest's terms."""
        return None if self.published is None else state_name(self.published)


@dataclass(frozen=True)
class Plan:
    """The items of a run, in manifest order, with the portal they concern."""

    domain: str
    manifest_digest: str
    items: tuple[PlanItem, ...] = field(default_factory=tuple)
    base_url: str | None = None
    unmanaged: tuple[UnmanagedDataset, ...] = ()

    @property
    def actions(self) -> tuple[PlanItem, ...]:
        """Return the items that send a request when applied."""
        return tuple(item for item in self.items if item.is_action)

    def counts(self) -> Counter[str]:
        """Count the items by kind, with unhealthy ones counted apart."""
        counts: Counter[str] = Counter()
        for item in self.items:
            counts["unhealthy" if item.unhealthy else item.kind] += 1
        return counts

    def summary(self) -> str:
        """Summarise the plan in one line, such as '2 to publish, 1 unchanged'."""
        counts = self.counts()
        parts = [
            f"{counts[PUBLISH]} to publish",
            f"{counts[UNPUBLISH]} to unpublish",
            f"{counts[NONE]} unchanged",
        ]
        for kind, label in (
            ("unhealthy", "unhealthy"),
            (BUSY, "busy"),
            (PROTECTED, "protected"),
            (NOT_FOUND, "not found"),
            (UNREADABLE, "unreadable"),
        ):
            if counts[kind]:
                parts.append(f"{counts[kind]} {label}")
        return ", ".join(parts)


def state_name(published: bool | None) -> str:
    """Name a published flag in the manifest's terms; None is "unknown"."""
    if published is None:
        return "unknown"
    return PUBLISHED if published else UNPUBLISHED


def normalize_status(name: str) -> str:
    """Map the finer status names seen in messages to the documented ones."""
    if name in SETTLED_STATUSES or name in BUSY_STATUSES:
        return name
    if name.startswith("processing_"):
        return "processing"
    if name.startswith("deleting_"):
        return "deleting"
    return name


def build_plan(
    domain: str,
    manifest_digest: str,
    desired: Iterable[DesiredDataset],
    observed: Mapping[str, Observation],
) -> Plan:
    """Compare each desired dataset with its observation and decide."""
    items = []
    with paused_gc():
        for wanted in desired:
            observation = observed.get(wanted.uid)
            if observation is None:
                observation = Unobservable(wanted.uid, False, "no observation was made")
            items.append(plan_item(wanted, observation))
    return Plan(domain, manifest_digest, tuple(items))


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cycle collector while many small objects without cycles are made.

    Collecting while a plan of 100,000 items is built only costs time: about a
    quarter of it, measured with benchmarks/offline_plan.py.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class _Verdict:
    kind: str
    reason: str
    heading: str | None = None
    unhealthy: bool = False


_IN_SYNC = {
    PUBLISHED: _Verdict(NONE, f"{PUBLISHED}, in sync"),
    UNPUBLISHED: _Verdict(NONE, f"{UNPUBLISHED}, in sync"),
}


def plan_item(wanted: DesiredDataset, observation: Observation) -> PlanItem:
    """Decide what to do with one dataset."""
    if isinstance(observation, Unobservable):
        return PlanItem(
            uid=wanted.uid,
            kind=NOT_FOUND if observation.not_found else UNREADABLE,
            desired=wanted.state,
            reason=observation.message,
            dataset_id=wanted.dataset_id,
        )
    status = normalize_status(observation.status)
    if status == "idle" and observation.published == (wanted.state == PUBLISHED):
        # Most datasets of a large manifest are idle and in sync.
        verdict = _IN_SYNC[wanted.state]
    else:
        verdict = _verdict(wanted, observation, status)
    return PlanItem(
        uid=wanted.uid,
        kind=verdict.kind,
        desired=wanted.state,
        reason=verdict.reason,
        dataset_id=observation.dataset_id or wanted.dataset_id,
        published=observation.published,
        status=status,
        since=observation.since,
        heading=verdict.heading,
        unhealthy=verdict.unhealthy,
        message=observation.message,
        user=observation.user,
        warnings=_id_warnings(wanted, observation),
    )


def _verdict(
    wanted: DesiredDataset, observation: ObservedDataset, status: str
) -> _Verdict:
    if status in BUSY_STATUSES:
        return _busy_verdict(wanted, observation, status)
    if status not in SETTLED_STATUSES:
        return _Verdict(UNREADABLE, f"unknown status {status!r}")
    verdict = _settled_verdict(wanted.state, observation, status)
    if verdict.kind == UNPUBLISH and wanted.protected:
        return _Verdict(PROTECTED, PROTECTED_NOTE)
    return verdict


def _settled_verdict(
    desired: str, observation: ObservedDataset, status: str
) -> _Verdict:
    wants_published = desired == PUBLISHED
    published = observation.published
    failed = status in FAILED_STATUSES
    last_run = f"last run ended in {status}: {observation.message or 'no message'}"
    if wants_published and not published:
        return _Verdict(PUBLISH, last_run if failed else "")
    if not wants_published and published:
        return _Verdict(UNPUBLISH, UNPUBLISH_NOTE)
    if wants_published and failed:
        return _Verdict(NONE, f"published, but {last_run}", unhealthy=True)
    return _Verdict(NONE, f"{desired}, in sync")


def _busy_verdict(
    wanted: DesiredDataset, observation: ObservedDataset, status: str
) -> _Verdict:
    heading = _heading(status, observation.published)
    if heading is None and status == "queued" and wanted.last_action in ACTIONS:
        heading = PUBLISHED if wanted.last_action == PUBLISH else UNPUBLISHED
    if heading is None:
        outcome = "outcome unknown"
    elif heading == wanted.state:
        outcome = f"heads to {heading}, as desired"
    else:
        outcome = f"heads to {heading}, not {wanted.state}: plan again once it settles"
    since = f" since {observation.since}" if observation.since else ""
    return _Verdict(BUSY, f"{status}{since}; {outcome}", heading=heading)


def _heading(status: str, published: bool) -> str | None:
    """Guess the state a busy dataset will reach, or None when it is unknown."""
    if status == "processing":
        return PUBLISHED
    if status == "deleting":
        return UNPUBLISHED
    # A queued job on an unpublished dataset can only be a publish; on a
    # published one it may be a republish or an unpublish.
    if status == "queued" and not published:
        return PUBLISHED
    return None


def _id_warnings(
    wanted: DesiredDataset, observation: ObservedDataset
) -> tuple[str, ...]:
    if (
        wanted.dataset_id is not None
        and observation.dataset_id is not None
        and wanted.dataset_id != observation.dataset_id
    ):
        return (
            f"the manifest says id {wanted.dataset_id!r} but the portal reports "
            f"{observation.dataset_id!r}",
        )
    return ()
