"""The ods-reconcile command: validate, plan and apply manifests."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from reconciler import __version__
from reconciler.apply import ActionResult, apply_plan
from reconciler.client import Client, Credentials, base_url_for
from reconciler.demo import demo_command
from reconciler.errors import ConfigError, ManifestError, ReconcilerError
from reconciler.manifest import Manifest, load_manifests, manifest_files
from reconciler.observe import plan_manifest
from reconciler.output import render_plan, render_results
from reconciler.plan import NOT_FOUND, UNREADABLE, Plan
from reconciler.simulator_cli import simulator_command
from reconciler.state import StateFile, default_state_path

log = logging.getLogger("reconciler")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_PARTIAL = 3

EXIT_CODES_HELP = """\b
Exit codes:
  0  success; for plan, nothing to change
  1  error: bad manifest, usage, credentials, unreachable portal,
     or a dataset not found or unreadable
  2  plan --detailed-exitcode only: changes pending
  3  apply: some actions failed, others succeeded
"""

DEFAULT_PARALLELISM = 8


@dataclass(frozen=True)
class Target:
    """The portal a run talks to and the manifest it reconciles."""

    manifest: Manifest
    base_url: str
    client: Client

    @property
    def domain(self) -> str:
        """Return the portal's host (and port), as recorded in plans and state."""
        return self.client.domain


def resolve_domain(option: str | None, manifest: Manifest) -> str:
    """Pick the domain: --domain, then ODS_DOMAIN, then the manifest's."""
    domain = option or os.environ.get("ODS_DOMAIN") or manifest.domain
    if not domain:
        raise ConfigError(
            "no domain: set `domain:` in the manifest, ODS_DOMAIN, or --domain"
        )
    return base_url_for(domain)


def open_target(paths: tuple[str, ...], domain: str | None, parallelism: int) -> Target:
    """Load the manifests and connect a client to their portal."""
    manifest = load_manifests(paths)
    base_url = resolve_domain(domain, manifest)
    client = Client(base_url, Credentials.from_env(), pool_size=parallelism)
    return Target(manifest, base_url, client)


def has_unobservable(plan: Plan) -> bool:
    """Tell whether a dataset of the plan is missing or unreadable."""
    return any(item.kind in (NOT_FOUND, UNREADABLE) for item in plan.items)


def apply_exit_code(plan: Plan, results: list[ActionResult]) -> int:
    """Choose the exit code of apply from what failed and what succeeded."""
    failed = sum(1 for result in results if not result.succeeded)
    problems = failed + sum(
        1 for item in plan.items if item.kind in (NOT_FOUND, UNREADABLE)
    )
    if problems == 0:
        return EXIT_OK
    succeeded = len(results) - failed
    return EXIT_PARTIAL if succeeded else EXIT_ERROR


manifests_argument = click.argument(
    "manifests", nargs=-1, required=True, type=click.Path(exists=False)
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


class ReconcilerGroup(click.Group):
    """A command group whose errors all exit with 1, never with click's 2.

    Exit code 2 means "changes pending"; a usage error must not be taken for it.
    """

    def main(  # type: ignore[override]
        self, args: list[str] | None = None, prog_name: str | None = None
    ) -> None:
        try:
            code = super().main(args, prog_name, standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = 130
        except click.ClickException as error:
            error.show()
            code = EXIT_ERROR
        except ReconcilerError as error:
            report_error(error)
            code = EXIT_ERROR
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=ReconcilerGroup, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="ods-reconcile")
@click.option(
    "-v", "--verbose", count=True, help="-v logs progress, -vv each HTTP request."
)
def cli(verbose: int) -> None:
    """Publish and unpublish Opendatasoft datasets as a YAML manifest declares.

    Credentials come from the environment only: ODS_API_KEY, or ODS_USERNAME
    and ODS_PASSWORD.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
def validate(manifests: tuple[str, ...]) -> None:
    """Check manifest files offline and report every problem with its line."""
    manifest = load_manifests(manifests)
    files = len(manifest.paths)
    click.echo(f"{files} file(s) valid: {len(manifest.datasets)} datasets declared")


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
@domain_option
@parallelism_option
@show_unchanged_option
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit with 2 when changes are pending, 0 when none are.",
)
def plan(
    manifests: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    show_unchanged: bool,
    detailed_exitcode: bool,
) -> None:
    """Show what apply would change; sends only GET requests."""
    target = open_target(manifests, domain, parallelism)
    the_plan = plan_manifest(target.client, target.manifest, parallelism=parallelism)
    click.echo(render_plan(the_plan, show_unchanged=show_unchanged))
    if has_unobservable(the_plan):
        sys.exit(EXIT_ERROR)
    if detailed_exitcode and the_plan.actions:
        sys.exit(EXIT_CHANGES)


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
@domain_option
@parallelism_option
@show_unchanged_option
@click.option("--dry-run", is_flag=True, help="Show the actions without sending them.")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="State file [default: beside the manifest, NAME.state.json].",
)
def apply(
    manifests: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    show_unchanged: bool,
    dry_run: bool,
    state_path: Path | None,
) -> None:
    """Publish and unpublish datasets until the portal matches the manifest."""
    target = open_target(manifests, domain, parallelism)
    path = state_path or default_state_path(manifest_files(manifests))
    state = None if dry_run else StateFile.load(path, target.domain)
    the_plan = plan_manifest(target.client, target.manifest, parallelism=parallelism)
    click.echo(render_plan(the_plan, show_unchanged=show_unchanged))
    click.echo()

    if state is not None:
        state.begin_run("apply", target.manifest.digest, dry_run)
    results = apply_plan(
        the_plan, target.client, state, dry_run=dry_run, parallelism=parallelism
    )
    click.echo(render_results(results, target.domain))
    code = apply_exit_code(the_plan, results)
    if state is not None:
        state.finish_run(
            {EXIT_OK: "succeeded", EXIT_PARTIAL: "partial"}.get(code, "failed")
        )
        click.echo(f"State file: {state.path}")
    sys.exit(code)


def report_error(error: ReconcilerError) -> None:
    """Print a known error to stderr, a manifest's problems one per line."""
    if isinstance(error, ManifestError):
        for problem in error.problems:
            click.echo(problem, err=True)
        count = len(error.problems)
        click.echo(f"Error: {count} problem(s) found in the manifest", err=True)
    else:
        click.echo(f"Error: {error}", err=True)


cli.add_command(demo_command)
cli.add_command(simulator_command)


def main() -> None:
    """Run the ods-reconcile command line."""
    cli.main(prog_name="ods-reconcile")
