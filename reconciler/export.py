"""Write a manifest of the portal's current publication state.

A team adopting the reconciler exports its portal once, reviews the file and
commits it, so that the first plan has nothing to publish or unpublish. Each
dataset is declared in the state its published flag has at export time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import yaml

from reconciler import __version__, schemas
from reconciler.client import Client, Credentials, base_url_for
from reconciler.errors import ConfigError
from reconciler.manifest import SCHEMA_NAME
from reconciler.observe import from_listing, parallel_map, read_status
from reconciler.plan import (
    BUSY_STATUSES,
    FAILED_STATUSES,
    PUBLISHED,
    SETTLED_STATUSES,
    UNPUBLISHED,
    DesiredDataset,
    Observation,
    ObservedDataset,
    normalize_status,
    plan_item,
)
from reconciler.state import write_atomic as replace_atomically

log = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 8
# Mode of a new --out file. A file that already exists keeps its mode.


@dataclass(frozen=True)
class ExportedDataset:
    """One listed dataset as the exported manifest declares it."""

    uid: str
    dataset_id: str | None
    # None when the state could not be read, so the entry is written as a comment
    # and the manifest still loads.
    published: bool | None
    # One line of explanation written as a comment above the entry.
    note: str | None = None

    @property
    def state(self) -> str:
        """Return the manifest state matching the published flag."""
        return PUBLISHED if self.published else UNPUBLISHED


def export_manifest(
    client: Client,
    domain: str,
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    exported_at: datetime | None = None,
) -> str:
    """Read every dataset the credentials can see and return them as a manifest."""
    check_domain(domain)
    datasets = export_datasets(client, parallelism=parallelism)
    return render_manifest(domain, datasets, exported_at or utc_now())


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(timezone.utc)


def check_domain(domain: str) -> None:
    """Raise ConfigError unless the manifest schema accepts `domain`."""
    schema = schemas.load_schema(SCHEMA_NAME)
    pattern = schemas.compile_pattern(schema["properties"]["domain"]["pattern"])
    if not pattern.search(domain):
        raise ConfigError(
            f"invalid domain {domain!r} for a manifest: expected a host name such "
            "as data.example.org or a base URL such as https://data.example.org:8443"
        )


def export_datasets(
    client: Client, *, parallelism: int = DEFAULT_PARALLELISM
) -> list[ExportedDataset]:
    """Read the listing, then the status of the datasets it leaves unclear."""
    listed = _list_by_uid(client)
    uid_pattern = _uid_pattern()
    valid = {uid: item for uid, item in listed.items() if uid_pattern.search(uid)}
    invalid = {uid: item for uid, item in listed.items() if uid not in valid}
    observations = _observe_listed(client, valid, parallelism)

    secrets = client.credentials.secrets()
    exported = [
        _exported(uid, item, observations[uid], secrets) for uid, item in valid.items()
    ]
    exported += [_invalid_uid(uid, item) for uid, item in invalid.items()]
    return sorted(exported, key=lambda dataset: dataset.uid)


def _list_by_uid(client: Client) -> dict[str, dict[str, Any]]:
    listed: dict[str, dict[str, Any]] = {}
    for item in client.list_datasets():
        uid = item.get("dataset_uid")
        if not isinstance(uid, str) or not uid:
            log.warning("listing item without a dataset_uid skipped: %.200r", item)
            continue
        # A dataset created while the pages are read can shift another one onto
        # the next page, so the same uid may be listed twice.
        listed.setdefault(uid, item)
    log.info("listing: %d datasets", len(listed))
    return listed


def _uid_pattern() -> re.Pattern[str]:
    schema = schemas.load_schema(SCHEMA_NAME)
    uid_schema = schema["$defs"]["dataset"]["properties"]["uid"]
    return schemas.compile_pattern(uid_schema["pattern"])


def _observe_listed(
    client: Client, listed: dict[str, dict[str, Any]], parallelism: int
) -> dict[str, Observation]:
    """Observe each dataset from the listing, reading its status where needed."""
    observations: dict[str, Observation] = {}
    to_read: list[str] = []
    for uid, item in listed.items():
        observed = from_listing(item)
        if observed is None or normalize_status(observed.status) in FAILED_STATUSES:
            # The listing carries no error message, and may lack the status or
            # the published flag.
            to_read.append(uid)
        else:
            observations[uid] = observed
    log.info("reading the status of %d datasets", len(to_read))

    def read(uid: str) -> Observation:
        return read_status(client, uid, listed[uid])

    read_observations = parallel_map(read, to_read, parallelism)
    observations.update(zip(to_read, read_observations, strict=True))
    return observations


def _exported(
    uid: str,
    item: dict[str, Any],
    observation: Observation,
    secrets: Sequence[str],
) -> ExportedDataset:
    dataset_id = _dataset_id(item)
    if isinstance(observation, ObservedDataset):
        note = _status_note(observation)
        if note is not None:
            note = _one_line(note, secrets)
        return ExportedDataset(uid, dataset_id, observation.published, note)

    message = _one_line(observation.message, secrets)
    # A dataset that vanished after the listing was read has no state to keep.
    published = None if observation.not_found else _listed_published(item)
    if published is None:
        log.warning("%s not exported: %s", uid, message)
        return ExportedDataset(uid, dataset_id, None, f"not exported: {message}")
    note = f"status unreadable, state from the listing: {message}"
    return ExportedDataset(uid, dataset_id, published, note)


def _invalid_uid(uid: str, item: dict[str, Any]) -> ExportedDataset:
    log.warning("%r not exported: not a valid dataset_uid for a manifest", uid)
    note = (
        "not exported: the dataset_uid is not da_ followed by lower-case letters "
        "or digits, as the manifest requires"
    )
    return ExportedDataset(_one_line(uid, ()), _dataset_id(item), None, note)


def _status_note(observed: ObservedDataset) -> str | None:
    status = normalize_status(observed.status)
    since = f" since {observed.since}" if observed.since else ""
    if status in BUSY_STATUSES:
        return f"busy ({status}){since}: {_busy_outcome(observed)}"
    if status in FAILED_STATUSES:
        message = observed.message or "no message"
        return f"last run ended in {status}{since}: {message}"
    if status not in SETTLED_STATUSES:
        return f"unknown status {observed.status!r}{since}"
    return None


def _busy_outcome(observed: ObservedDataset) -> str:
    state = PUBLISHED if observed.published else UNPUBLISHED
    heading = plan_item(DesiredDataset(observed.uid, state), observed).heading
    at_export = f"exported as {state}, the state at export time"
    if heading is None:
        return f"outcome unknown, {at_export}"
    if heading == state:
        return f"heads to {heading}"
    return f"heads to {heading}, {at_export}"


def _dataset_id(item: dict[str, Any]) -> str | None:
    value = item.get("dataset_id")
    # A digits-only dataset_id may arrive as a JSON number.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _listed_published(item: dict[str, Any]) -> bool | None:
    metas = item.get("metas")
    publishing = metas.get("publishing") if isinstance(metas, dict) else None
    value = publishing.get("published") if isinstance(publishing, dict) else None
    return value if isinstance(value, bool) else None


def _one_line(text: str, secrets: Iterable[str]) -> str:
    """Make text fit a YAML comment: one line, printable, without secrets."""
    for secret in secrets:
        text = text.replace(secret, "***")
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())


def render_manifest(
    domain: str, datasets: Sequence[ExportedDataset], exported_at: datetime
) -> str:
    """Render the datasets as manifest YAML, under a header naming domain and time."""
    moment = exported_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# Exported from {domain} at {moment} by ods-reconcile export {__version__}.",
        "# Each state is the dataset's published flag at that time. Review the",
        "# file and remove the datasets this repository must not manage.",
        "version: 1",
        f"domain: {quote(domain)}",
        "datasets:" if datasets else "datasets: []",
    ]
    for dataset in datasets:
        lines += _entry_lines(dataset)
    return "\n".join(lines) + "\n"


def _entry_lines(dataset: ExportedDataset) -> list[str]:
    lines = [f"  # {dataset.note}"] if dataset.note else []
    if dataset.published is None:
        named = f" ({_one_line(dataset.dataset_id, ())})" if dataset.dataset_id else ""
        return [*lines, f"  # {dataset.uid}{named}"]
    lines.append(f"  - uid: {dataset.uid}")
    if dataset.dataset_id is not None:
        lines.append(f"    id: {quote(dataset.dataset_id)}")
    lines.append(f"    state: {dataset.state}")
    return lines


def quote(text: str) -> str:
    """Return text as a double-quoted YAML scalar, which every parser reads as text.

    Quoting keeps values such as off, 0123 or 1.10 strings, which YAML would
    otherwise read as a boolean or a number.
    """
    dumped: str = yaml.safe_dump(
        text, default_style='"', allow_unicode=True, width=float("inf")
    )
    return dumped.rstrip("\n")


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file in path's folder, then rename it over path."""
    try:
        replace_atomically(path, text)
    except OSError as error:
        raise ConfigError(
            f"failed to write {path}: {error.strerror}; choose another --out path"
        ) from None


@click.command("export")
@click.option(
    "--domain",
    envvar="ODS_DOMAIN",
    show_envvar=True,
    help="Portal host or base URL to export; written as the manifest's domain.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the manifest to this file, replacing it atomically "
    "[default: standard output].",
)
@click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=DEFAULT_PARALLELISM,
    show_default=True,
    help="Maximum number of requests in flight.",
)
def export_command(domain: str | None, out_path: Path | None, parallelism: int) -> None:
    """Write a manifest of the portal's current publication state.

    Every dataset the credentials can edit is declared in the state its
    published flag has now, sorted by uid, so that a plan of the file right
    after the export has nothing to publish or unpublish.
    """
    if not domain:
        raise ConfigError("no domain: pass --domain or set ODS_DOMAIN")
    check_domain(domain)
    client = Client(base_url_for(domain), Credentials.from_env(), pool_size=parallelism)
    try:
        datasets = export_datasets(client, parallelism=parallelism)
    finally:
        client.close()

    text = render_manifest(domain, datasets, utc_now())
    if out_path is None:
        click.echo(text, nl=False)
        return
    write_atomic(out_path, text)
    declared = sum(1 for dataset in datasets if dataset.published is not None)
    click.echo(f"Exported {declared} datasets from {domain} to {out_path}")
