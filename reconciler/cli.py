"""The ods-reconcile command: validate, plan, drift, and the group of all commands."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler.cli_apply import apply_command
from reconciler.cli_options import (
    EXIT_CHANGES,
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_STALE,
    domain_option,
    exclude_option,
    exit_if_unobservable,
    format_option,
    make_selector,
    manifests_argument,
    only_option,
    open_target,
    parallelism_option,
    read_plan,
    set_verbosity,
    show_unchanged_option,
    state_option,
    unmanaged_option,
    use_color,
    verbose_option,
)
from reconciler.demo import demo_command
from reconciler.errors import (
    ConfigError,
    ManifestError,
    ReconcilerError,
    StalePlanError,
)
from reconciler.export import export_command
from reconciler.github import annotate_problems, append_step_summary, on_github_actions
from reconciler.lock import StateLockedError, force_unlock_command
from reconciler.manifest import Manifest, load_manifests, manifest_files
from reconciler.markdown import render_markdown
from reconciler.observe import STOPPING
from reconciler.output import plural, render_drift, render_plan
from reconciler.plan import Plan
from reconciler.planfile import render_json, save_plan
from reconciler.simulator_cli import simulator_command
from reconciler.state import default_state_path

log = logging.getLogger("reconciler")


def echo_plan(plan: Plan, output_format: str, *, show_unchanged: bool = False) -> None:
    """Print the plan in the chosen format; on GitHub, add it to the job summary."""
    if output_format == "json":
        click.echo(render_json(plan), nl=False)
    elif output_format == "markdown":
        click.echo(render_markdown(plan), nl=False)
    else:
        click.echo(render_plan(plan, color=use_color(), show_unchanged=show_unchanged))
    if on_github_actions():
        append_step_summary(render_markdown(plan))


class ReconcilerGroup(click.Group):
    """A command group whose errors all exit with 1, never with click's 2.

    Exit code 2 means "changes pending"; a usage error must not be taken for it.
    """

    def main(  # type: ignore[override]
        self, args: list[str] | None = None, prog_name: str | None = None
    ) -> None:
        STOPPING.clear()
        try:
            code = super().main(args, prog_name, standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = 130
        except click.ClickException as error:
            error.show()
            code = EXIT_ERROR
        except StateLockedError as error:
            report_error(error)
            code = EXIT_LOCKED
        except StalePlanError as error:
            report_error(error)
            code = EXIT_STALE
        except ReconcilerError as error:
            report_error(error)
            code = EXIT_ERROR
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def manifest_facts(manifest: Manifest) -> dict[str, Any]:
    """Collect what applying a saved plan needs to know of its manifest."""
    return {
        "managed_count": len(manifest.datasets),
        "protect": [e.uid for e in manifest.datasets if e.protect is True],
        "unprotect": [e.uid for e in manifest.datasets if e.protect is False],
    }


def check_not_a_manifest(out: Path, manifest: Manifest, state_file: Path) -> None:
    """Refuse to save a plan over a manifest file or the state file."""
    taken = [Path(path) for path in manifest.paths] + [state_file]
    if any(path.resolve() == out.resolve() for path in taken):
        raise ConfigError(
            f"--out {out} is a manifest or the state file; choose another path"
        )


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
    logging.basicConfig(format="%(levelname)s: %(message)s")
    set_verbosity(verbose)


@cli.command(epilog=EXIT_CODES_HELP)
@manifests_argument
@verbose_option
def validate(manifests: tuple[str, ...]) -> None:
    """Check manifest files offline and report every problem with its line."""
    manifest = load_manifests(manifests)
    files = len(manifest.paths)
    noun = "file" if files == 1 else "files"
    declared = plural(len(manifest.datasets), "dataset")
    click.echo(f"{files} {noun} valid: {declared} declared")


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
@state_option
@verbose_option
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
    state_path: Path | None,
) -> None:
    """Show what apply would change; sends only GET requests."""
    target = open_target(manifests, domain, parallelism)
    the_plan = read_plan(
        target,
        manifests,
        parallelism=parallelism,
        select=make_selector(only, exclude, target.manifest),
        state_path=state_path,
        report_unmanaged=report_unmanaged,
    )
    echo_plan(the_plan, output_format, show_unchanged=show_unchanged)
    if out is not None:
        state_file = state_path or default_state_path(manifest_files(manifests))
        check_not_a_manifest(out, target.manifest, state_file)
        save_plan(
            the_plan,
            out,
            state_path=state_file,
            manifest_paths=manifests,
            manifest_facts=manifest_facts(target.manifest),
        )
        click.echo(f"Plan saved to {out}", err=True)
    exit_if_unobservable(the_plan)
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
@state_option
@verbose_option
def drift(
    manifests: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    output_format: str,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    report_unmanaged: bool,
    state_path: Path | None,
) -> None:
    """Report managed datasets whose live state differs from the manifest.

    Read-only. Busy datasets, republishing ones included, are not drift. Exits
    with 2 when drift is found.
    """
    target = open_target(manifests, domain, parallelism)
    the_plan = read_plan(
        target,
        manifests,
        parallelism=parallelism,
        select=make_selector(only, exclude, target.manifest),
        state_path=state_path,
        report_unmanaged=report_unmanaged,
        expand_user=True,
    )
    if output_format == "text":
        click.echo(render_drift(the_plan))
        if on_github_actions():
            append_step_summary(render_markdown(the_plan, title="ods-reconcile drift"))
    else:
        echo_plan(the_plan, output_format)
    exit_if_unobservable(the_plan)
    if the_plan.actions:
        sys.exit(EXIT_CHANGES)


cli.add_command(apply_command)
cli.add_command(demo_command)
cli.add_command(export_command)
cli.add_command(force_unlock_command)
cli.add_command(simulator_command)


def main() -> None:
    """Run the ods-reconcile command line."""
    # Stop on SIGTERM, as CI runners send it, the way Ctrl-C stops: queued
    # requests are dropped, and the lock and the state file are left in order.
    signal.signal(signal.SIGTERM, _interrupt)
    cli.main(prog_name="ods-reconcile")


def _interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt
