"""Options, exit codes and helpers shared by the ods-reconcile commands."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import click

from reconciler.client import Client, Credentials, base_url_for
from reconciler.errors import ConfigError
from reconciler.manifest import Manifest, load_manifests, manifest_files
from reconciler.plan import NOT_FOUND, UNREADABLE, Plan
from reconciler.state import History, StateFile, default_state_path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_PARTIAL = 3
EXIT_STALE = 4
EXIT_LOCKED = 5

EXIT_CODES = (
    (EXIT_OK, "success; for plan and drift, nothing to change"),
    (EXIT_ERROR, "error: invalid input, credentials, portal, or every action failed"),
    (EXIT_CHANGES, "changes pending (plan --detailed-exitcode) or drift found (drift)"),
    (EXIT_PARTIAL, "partial: some datasets failed or were left undone, others not"),
    (EXIT_STALE, "stale plan: a saved plan's dataset moved since; it was not acted on"),
    (EXIT_LOCKED, "locked: another run holds the state file, or its lock is stale"),
)
EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code}  {meaning}" for code, meaning in EXIT_CODES
)
DEFAULT_PARALLELISM = 8
FORMATS = ("text", "markdown", "json")


@dataclass(frozen=True)
class Target:
    """The manifest a run reconciles and a client of its portal."""

    manifest: Manifest
    client: Client


def resolve_domain(option: str | None, manifest_domain: str | None) -> str:
    """Pick the domain: --domain, then ODS_DOMAIN, then the manifest's."""
    domain = option or os.environ.get("ODS_DOMAIN") or manifest_domain
    if not domain:
        raise ConfigError(
            "no domain: set `domain:` in the manifest, ODS_DOMAIN, or --domain"
        )
    return base_url_for(domain)


def open_target(paths: Sequence[str], domain: str | None, parallelism: int) -> Target:
    """Load the manifests and connect a client to their portal."""
    manifest = load_manifests(paths)
    base_url = resolve_domain(domain, manifest.domain)
    client = Client(base_url, Credentials.from_env(), pool_size=parallelism)
    return Target(manifest, client)


def make_selector(
    only: Sequence[str], exclude: Sequence[str]
) -> Callable[[str], bool] | None:
    """Build the uid filter of --only and --exclude (UIDs or glob patterns)."""
    if not only and not exclude:
        return None

    def selected(uid: str) -> bool:
        if only and not any(fnmatch.fnmatchcase(uid, p) for p in only):
            return False
        return not any(fnmatch.fnmatchcase(uid, p) for p in exclude)

    return selected


def read_history(paths: Sequence[str], target: Target) -> History:
    """Gather the protections and actions under way: manifest and state file."""
    state_path = default_state_path(manifest_files(paths))
    # A missing state file loads as an empty one, and the manifest's own
    # protections still count.
    return StateFile.load(state_path, target.client.domain).known(target.manifest)


def has_unobservable(plan: Plan) -> bool:
    """Tell whether a dataset of the plan is missing or unreadable."""
    return any(item.kind in (NOT_FOUND, UNREADABLE) for item in plan.items)


def use_color() -> bool:
    """Colour text output on a terminal, unless NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


manifests_argument = click.argument(
    "manifests", nargs=-1, required=True, type=click.Path()
)
domain_option = click.option(
    "--domain",
    help="Portal host or base URL; overrides ODS_DOMAIN and the manifest's domain.",
)
parallelism_option = click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=DEFAULT_PARALLELISM,
    show_default=True,
    help="Maximum number of requests in flight.",
)
show_unchanged_option = click.option(
    "--show-unchanged", is_flag=True, help="Also list the datasets already in sync."
)
format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people, markdown for a pull-request comment, json for tools.",
)
only_option = click.option(
    "--only",
    multiple=True,
    metavar="UID|GLOB",
    help="Plan only these datasets; repeatable; glob patterns such as 'da_b*'.",
)
exclude_option = click.option(
    "--exclude",
    multiple=True,
    metavar="UID|GLOB",
    help="Leave these datasets alone; repeatable; glob patterns allowed.",
)
unmanaged_option = click.option(
    "--report-unmanaged",
    is_flag=True,
    help="Also list the portal's datasets that no manifest declares.",
)
