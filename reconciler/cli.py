"""The ods-reconcile command: validate, plan, drift and apply manifests."""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from reconciler import __version__
from reconciler.apply import FAILED, STALE, ActionResult, apply_plan
from reconciler.client import Client, Credentials, base_url_for
from reconciler.demo import demo_command
from reconciler.errors import ConfigError, ManifestError, ReconcilerError
from reconciler.export import export_command
from reconciler.github import annotate_problems, append_step_summary, on_github_actions
from reconciler.manifest import Manifest, load_manifests, manifest_files
from reconciler.markdown import render_markdown
from reconciler.observe import plan_manifest
from reconciler.output import render_drift, render_plan, render_results
from reconciler.plan import NOT_FOUND, UNREADABLE, Plan
from reconciler.planfile import is_saved_plan, load_plan, render_json, save_plan
from reconciler.simulator_cli import simulator_command
from reconciler.state import StateFile, default_state_path

log = logging.getLogger("reconciler")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_PARTIAL = 3
EXIT_STALE = 4

EXIT_CODES = (
    (EXIT_OK, "success; for plan and drift, nothing to change"),
    (EXIT_ERROR, "error: invalid input, credentials, portal, or every action failed"),
    (EXIT_CHANGES, "changes pending (plan --detailed-exitcode) or drift found (drift)"),
    (EXIT_PARTIAL, "partial failure: some actions failed, others succeeded"),
    (EXIT_STALE, "stale plan: a saved plan's dataset moved since; it was not acted on"),
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


def has_unobservable(plan: Plan) -> bool:
    """Tell whether a dataset of the plan is missing or unreadable."""
    return any(item.kind in (NOT_FOUND, UNREADABLE) for item in plan.items)


def apply_exit_code(plan: Plan, results: Sequence[ActionResult]) -> int:
    """Choose the exit code of apply from what failed and what succeeded."""
    failed = sum(1 for result in results if result.outcome == FAILED)
    failed += sum(1 for item in plan.items if item.kind in (NOT_FOUND, UNREADABLE))
    if failed:
        succeeded = sum(1 for result in results if result.succeeded)
        return EXIT_PARTIAL if succeeded else EXIT_ERROR
    if any(result.outcome == STALE for result in results):
        return EXIT_STALE
    return EXIT_OK


def use_color() -> bool:
    """Colour text output on a terminal, unless NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def echo_plan(plan: Plan, output_format: str, **text_options: bool) -> None:
    """Print the plan in the chosen format; on GitHub, add it to the job summary."""
    if output_format == "json":
        click.echo(render_json(plan), nl=False)
    elif output_format == "markdown":
        click.echo(render_markdown(plan), nl=False)
    else:
        click.echo(render_plan(plan, color=use_color(), **text_options))
    if on_github_actions():
        append_step_summary(render_markdown(plan))


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


def report_error(error: ReconcilerError) -> None:
    """Print a known error to stderr, a manifest's problems one per line."""
    if isinstance(error, ManifestError):
        for problem in error.problems:
            click.echo(problem, err=True)
        if on_github_actions():
            annotate_problems(error.problems)
        count = len(error.problems)
        noun = "problem" if count == 1 else "problems"
        click.echo(f"Error: {count} {noun} found in the manifest", err=True)
    else:
        click.echo(f"Error: {error}", err=True)


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
    noun = "file" if files == 1 else "files"
    click.echo(f"{files} {noun} valid: {len(manifest.datasets)} datasets declared")


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
@domain_option
@parallelism_option
@format_option
@show_unchanged_option
@only_option
@exclude_option
@unmanaged_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the plan as JSON, for `ods-reconcile apply FILE`.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit with 2 when changes are pending, 0 when none are.",
)
def plan(
    manifests: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    output_format: str,
    show_unchanged: bool,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    report_unmanaged: bool,
    out: Path | None,
    detailed_exitcode: bool,
) -> None:
    """Show what apply would change; sends only GET requests."""
    target = open_target(manifests, domain, parallelism)
    the_plan = plan_manifest(
        target.client,
        target.manifest,
        parallelism=parallelism,
        select=make_selector(only, exclude),
    )
    echo_plan(
        the_plan,
        output_format,
        show_unchanged=show_unchanged,
        show_unmanaged=report_unmanaged,
    )
    if out is not None:
        state_path = default_state_path(manifest_files(manifests))
        save_plan(the_plan, out, state_path=state_path)
        click.echo(f"Plan saved to {out}", err=True)
    if has_unobservable(the_plan):
        sys.exit(EXIT_ERROR)
    if detailed_exitcode and the_plan.actions:
        sys.exit(EXIT_CHANGES)


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
@domain_option
@parallelism_option
@format_option
@only_option
@exclude_option
@unmanaged_option
def drift(
    manifests: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    output_format: str,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    report_unmanaged: bool,
) -> None:
    """Report managed datasets whose live state differs from the manifest.

    Read-only. Busy datasets, republishing ones included, are not drift. Exits
    with 2 when drift is found.
    """
    target = open_target(manifests, domain, parallelism)
    the_plan = plan_manifest(
        target.client,
        target.manifest,
        parallelism=parallelism,
        select=make_selector(only, exclude),
        expand_user=True,
    )
    if output_format == "text":
        click.echo(render_drift(the_plan, show_unmanaged=report_unmanaged))
        if on_github_actions():
            append_step_summary(render_markdown(the_plan, title="ods-reconcile drift"))
    else:
        echo_plan(the_plan, output_format)
    if has_unobservable(the_plan):
        sys.exit(EXIT_ERROR)
    if the_plan.actions:
        sys.exit(EXIT_CHANGES)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@domain_option
@parallelism_option
@show_unchanged_option
@only_option
@exclude_option
@click.option("--dry-run", is_flag=True, help="Show the actions without sending them.")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="State file [default: beside the manifest, NAME.state.json].",
)
def apply(
    sources: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    show_unchanged: bool,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    state_path: Path | None,
) -> None:
    """Publish and unpublish datasets until the portal matches the manifest.

    SOURCES are manifest files or folders, or one plan saved by `plan --out`:
    then exactly that plan is applied, and a dataset whose live state moved
    since the plan is refused.
    """
    if len(sources) == 1 and is_saved_plan(Path(sources[0])):
        if only or exclude:
            raise ConfigError(
                "--only and --exclude apply when planning, not to a saved plan"
            )
        code = apply_saved(Path(sources[0]), domain, parallelism, dry_run, state_path)
        sys.exit(code)

    target = open_target(sources, domain, parallelism)
    path = state_path or default_state_path(manifest_files(sources))
    state = None if dry_run else StateFile.load(path, target.client.domain)
    the_plan = plan_manifest(
        target.client,
        target.manifest,
        parallelism=parallelism,
        select=make_selector(only, exclude),
    )
    click.echo(render_plan(the_plan, show_unchanged=show_unchanged, color=use_color()))
    click.echo()
    sys.exit(run_apply(the_plan, target.client, state, dry_run, parallelism))


def apply_saved(
    path: Path,
    domain: str | None,
    parallelism: int,
    dry_run: bool,
    state_path: Path | None,
) -> int:
    """Apply a saved plan to the portal it was made for; return the exit code."""
    the_plan, body = load_plan(path)
    base_url = base_url_for(domain) if domain else the_plan.base_url
    if base_url is None or base_url != the_plan.base_url:
        raise ConfigError(
            f"{path}: the plan was made for {the_plan.base_url}, not {base_url}"
        )
    client = Client(base_url, Credentials.from_env(), pool_size=parallelism)
    recorded = body.get("state_path")
    path_of_state = state_path or (Path(recorded) if recorded else None)
    if path_of_state is None:
        raise ConfigError(f"{path}: the plan names no state file; give --state")
    state = None if dry_run else StateFile.load(path_of_state, client.domain)
    click.echo(f"Applying the plan saved in {path} ({the_plan.summary()})\n")
    return run_apply(
        the_plan, client, state, dry_run, parallelism, plan_id=body["plan_id"]
    )


def run_apply(
    the_plan: Plan,
    client: Client,
    state: StateFile | None,
    dry_run: bool,
    parallelism: int,
    plan_id: str | None = None,
) -> int:
    """Apply a plan, print the results, record the run; return the exit code."""
    if state is not None:
        state.begin_run("apply", the_plan.manifest_digest, dry_run)
    results = apply_plan(
        the_plan,
        client,
        state,
        dry_run=dry_run,
        parallelism=parallelism,
        plan_id=plan_id,
    )
    click.echo(render_results(results, client.domain))
    code = apply_exit_code(the_plan, results)
    if state is not None:
        outcome = {
            EXIT_OK: "succeeded",
            EXIT_PARTIAL: "partial",
            EXIT_STALE: "stale",
        }.get(code, "failed")
        state.finish_run(outcome)
        click.echo(f"State file: {state.path}")
    return code


cli.add_command(demo_command)
cli.add_command(export_command)
cli.add_command(simulator_command)


def main() -> None:
    """Run the ods-reconcile command line."""
    cli.main(prog_name="ods-reconcile")
