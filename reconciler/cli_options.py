"""Options, exit codes and helpers shared by the ods-reconcile commands."""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import click

from reconciler.client import Client, Credentials, base_url_for
from reconciler.errors import ConfigError, StateError
from reconciler.manifest import Manifest, load_manifests, manifest_files
from reconciler.observe import plan_manifest
from reconciler.output import plural
from reconciler.plan import NOT_FOUND, UNREADABLE, Plan
from reconciler.state import History, StateFile, default_state_path, empty_state

log = logging.getLogger(__name__)

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
    only: Sequence[str], exclude: Sequence[str], manifest: Manifest
) -> Callable[[str], bool] | None:
    """Build the uid filter of --only and --exclude (UIDs or glob patterns).

    A filter that keeps none of the manifest's datasets is an error: it is
    most likely a typo, and a run that silently does nothing hides it.
    """
    if not only and not exclude:
        return None

    def selected(uid: str) -> bool:
        if only and not any(fnmatch.fnmatchcase(uid, p) for p in only):
            return False
        return not any(fnmatch.fnmatchcase(uid, p) for p in exclude)

    if manifest.datasets and not any(selected(e.uid) for e in manifest.datasets):
        count = plural(len(manifest.datasets), "dataset")
        raise ConfigError(
            f"--only and --exclude select none of the {count} of the manifest; "
            "check the UIDs or patterns (they are case-sensitive)"
        )
    return selected


def read_history(
    paths: Sequence[str], target: Target, state_path: Path | None = None
) -> History:
    """Gather the protections and actions under way: manifest and state file.

    Plan and drift only read: a state file that cannot be used (for another
    domain, say, when --domain points the manifest at a staging portal) is
    set aside with a warning, and the manifest's protections still count.
    """
    path = state_path or default_state_path(manifest_files(paths))
    try:
        state = StateFile.load(path, target.client.domain)
    except StateError as error:
        log.warning("state file not used: %s", error)
        state = StateFile(path, empty_state(target.client.domain))
    return state.known(target.manifest)


def read_plan(
    target: Target,
    paths: Sequence[str],
    *,
    parallelism: int,
    select: Callable[[str], bool] | None,
    state_path: Path | None,
    report_unmanaged: bool,
    expand_user: bool = False,
) -> Plan:
    """Plan the target's manifest, read-only, with the state file's history."""
    the_plan = plan_manifest(
        target.client,
        target.manifest,
        parallelism=parallelism,
        select=select,
        expand_user=expand_user,
        known=read_history(paths, target, state_path),
    )
    return the_plan if report_unmanaged else replace(the_plan, unmanaged=())


def exit_if_unobservable(plan: Plan) -> None:
    """Exit with 1, saying why, when a dataset is missing or unreadable."""
    missing = [item.uid for item in plan.items if item.kind in (NOT_FOUND, UNREADABLE)]
    if missing:
        count = plural(len(missing), "dataset")
        click.echo(
            f"Error: {count} not found or unreadable: {', '.join(missing[:10])}"
            + (", ..." if len(missing) > 10 else ""),
            err=True,
        )
        sys.exit(EXIT_ERROR)


def set_verbosity(verbose: int) -> None:
    """Log warnings, then progress (-v), then each HTTP request (-vv), to stderr."""
    if verbose or not logging.getLogger().level:
        logging.getLogger().setLevel(logging.WARNING - 10 * min(verbose, 2))


def _verbosity_callback(context: click.Context, parameter: object, value: int) -> None:
    if value:
        set_verbosity(value)


verbose_option = click.option(
    "-v",
    "--verbose",
    count=True,
    expose_value=False,
    callback=_verbosity_callback,
    help="-v logs progress, -vv each HTTP request, to stderr.",
)
state_option = click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="State file to read protections from [default: beside the manifest].",
)


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
    help="Only these datasets; repeatable; glob patterns such as 'da_b*'.",
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
