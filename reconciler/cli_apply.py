"""The apply command: act on a fresh plan or on a saved one."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from reconciler.apply import (
    ALREADY_APPLIED,
    FAILED,
    IN_SYNC,
    SKIPPED,
    STALE,
    SUBMITTED,
    ActionResult,
    apply_plan,
)
from reconciler.busy import POLICIES, busy_handler
from reconciler.cli_options import (
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_STALE,
    domain_option,
    exclude_option,
    make_selector,
    only_option,
    open_target,
    parallelism_option,
    show_unchanged_option,
    use_color,
    verbose_option,
)
from reconciler.client import Client, Credentials, base_url_for
from reconciler.errors import ConfigError, GuardError, ManifestError, StalePlanError
from reconciler.follow import JOB_FAILED, JOB_TIMED_OUT, follow_jobs
from reconciler.lock import StateLock
from reconciler.manifest import load_manifests, manifest_files
from reconciler.observe import plan_manifest
from reconciler.output import render_plan, render_results
from reconciler.plan import (
    BUSY,
    NOT_FOUND,
    PROTECTED,
    PROTECTED_NOTE,
    UNPUBLISH,
    UNPUBLISHED,
    UNREADABLE,
    Plan,
)
from reconciler.planfile import is_saved_plan, load_plan
from reconciler.progress import Progress
from reconciler.state import (
    StateFile,
    default_state_path,
    remove_leftover_temporary_files,
)

# Apply refuses a plan that unpublishes more than this many datasets, or more
# than this share of the managed ones, unless --allow-unpublish allows it.
UNPUBLISH_LIMIT = 10
UNPUBLISH_SHARE = 0.25
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class ApplyOptions:
    """The settings of an apply run, from its command-line options."""

    dry_run: bool
    parallelism: int
    on_busy: str
    wait: bool
    timeout: float
    allow_unpublish: int


def check_unpublish_guard(
    plan: Plan, managed: int, allowed: int, on_busy: str = "skip"
) -> None:
    """Refuse a plan that unpublishes many datasets unless the user allowed it.

    Under --on-busy wait or abort, a busy dataset that must end unpublished
    counts too: apply may unpublish it once it settles.
    """
    count = sum(1 for item in plan.items if item.kind == UNPUBLISH)
    if on_busy != "skip":
        count += sum(
            1
            for item in plan.items
            if item.kind == BUSY
            and item.desired == UNPUBLISHED
            and item.heading != UNPUBLISHED
        )
    if count <= allowed:
        return
    if count > UNPUBLISH_LIMIT or count > UNPUBLISH_SHARE * managed:
        raise GuardError(
            f"the plan unpublishes {count} of {managed} managed datasets, more than "
            f"{UNPUBLISH_LIMIT} or {UNPUBLISH_SHARE:.0%}; review the plan, then "
            f"run again with --allow-unpublish {count}"
        )


def apply_exit_code(plan: Plan, results: Sequence[ActionResult]) -> int:
    """Choose the exit code of apply from what failed, was left undone or succeeded.

    A job that --wait saw time out was accepted but is not known to be done, so
    it counts as left undone, like a skipped busy dataset.
    """
    failed = sum(
        1
        for result in results
        if result.outcome == FAILED or result.job_outcome == JOB_FAILED
    )
    failed += sum(1 for item in plan.items if item.kind in (NOT_FOUND, UNREADABLE))
    undone = sum(
        1
        for result in results
        if result.outcome == SKIPPED or result.job_outcome == JOB_TIMED_OUT
    )
    accepted = sum(
        1
        for result in results
        if result.outcome in (SUBMITTED, ALREADY_APPLIED, IN_SYNC)
        and result.job_outcome != JOB_FAILED
    )
    if failed and not accepted and not undone:
        return EXIT_ERROR
    if failed or undone:
        return EXIT_PARTIAL
    if any(result.outcome == STALE for result in results):
        return EXIT_STALE
    return EXIT_OK


@click.command("apply", epilog=EXIT_CODES_HELP)
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
@click.option(
    "--on-busy",
    type=click.Choice(POLICIES),
    default="skip",
    show_default=True,
    help="For a busy dataset that will not reach its desired state by itself: "
    "skip it, wait for it (up to --timeout), or abort a publish under way "
    "when it must be unpublished.",
)
@click.option(
    "--wait", is_flag=True, help="Follow the submitted jobs until they finish."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Maximum seconds to wait, for --wait and for --on-busy wait.",
)
@verbose_option
@click.option(
    "--allow-unpublish",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help=f"Allow up to N unpublishes; without it, more than {UNPUBLISH_LIMIT} "
    f"or more than {UNPUBLISH_SHARE:.0%} of the managed datasets are refused.",
)
def apply_command(
    sources: tuple[str, ...],
    domain: str | None,
    parallelism: int,
    show_unchanged: bool,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    state_path: Path | None,
    on_busy: str,
    wait: bool,
    timeout: float,
    allow_unpublish: int,
) -> None:
    """Publish and unpublish datasets until the portal matches the manifest.

    SOURCES are manifest files or folders, or one plan saved by `plan --out`:
    then exactly that plan is applied, and a dataset whose live state moved
    since the plan is refused.
    """
    options = ApplyOptions(
        dry_run, parallelism, on_busy, wait, timeout, allow_unpublish
    )
    saved = [source for source in sources if is_saved_plan(Path(source))]
    if saved and len(sources) > 1:
        raise ConfigError(
            f"{saved[0]} is a saved plan: apply it alone, without manifests"
        )
    if saved:
        if only or exclude:
            raise ConfigError(
                "--only and --exclude apply when planning, not to a saved plan"
            )
        sys.exit(apply_saved(Path(sources[0]), domain, state_path, options))

    target = open_target(sources, domain, parallelism)
    manifest = target.manifest
    path = state_path or default_state_path(manifest_files(sources))
    with StateLock(path, "apply") if not dry_run else _no_lock():
        if not dry_run:
            remove_leftover_temporary_files(path)
        state = StateFile.load(path, target.client.domain)
        the_plan = plan_manifest(
            target.client,
            manifest,
            parallelism=parallelism,
            select=make_selector(only, exclude, manifest),
            known=state.known(manifest),
        )
        the_plan = replace(the_plan, unmanaged=())
        color = use_color()
        click.echo(render_plan(the_plan, show_unchanged=show_unchanged, color=color))
        click.echo()
        check_unpublish_guard(
            the_plan, len(manifest.datasets), allow_unpublish, on_busy
        )
        if not dry_run:
            state.remember_protections(manifest)
        code = run_apply(the_plan, target.client, state, options)
    sys.exit(code)


def apply_saved(
    path: Path, domain: str | None, state_path: Path | None, options: ApplyOptions
) -> int:
    """Apply a saved plan to the portal it was made for; return the exit code."""
    the_plan, body = load_plan(path)
    client = saved_plan_client(path, the_plan, domain, options.parallelism)
    recorded = body.get("state_path")
    path_of_state = state_path or (Path(recorded) if recorded else None)
    if path_of_state is None:
        raise ConfigError(f"{path}: the plan names no state file; give --state")

    check_manifest_unchanged(path, body)
    click.echo(f"Applying the plan saved in {path} ({the_plan.summary()})\n")
    check_unpublish_guard(
        the_plan, managed_count(body), options.allow_unpublish, options.on_busy
    )

    with StateLock(path_of_state, "apply") if not options.dry_run else _no_lock():
        if not options.dry_run:
            remove_leftover_temporary_files(path_of_state)
        state = StateFile.load(path_of_state, client.domain)
        # A dry run never saves the state, so the change stays in memory.
        state.change_protections(body.get("protect", []), body.get("unprotect", []))
        the_plan = protect_items(the_plan, state.protected)
        return run_apply(the_plan, client, state, options, plan_id=body["plan_id"])


def saved_plan_client(
    path: Path, the_plan: Plan, domain: str | None, parallelism: int
) -> Client:
    """Connect to the portal a saved plan was made for, checking --domain."""
    if the_plan.base_url is None:
        raise ConfigError(f"{path}: the plan names no portal; make a new plan")
    # The same checks as for a manifest's domain: HTTPS unless loopback.
    planned_url = base_url_for(the_plan.base_url)
    base_url = base_url_for(domain) if domain else planned_url
    if base_url != planned_url:
        raise ConfigError(
            f"{path}: the plan was made for {the_plan.base_url}, not {base_url}"
        )
    return Client(base_url, Credentials.from_env(), pool_size=parallelism)


def check_manifest_unchanged(path: Path, body: dict[str, Any]) -> None:
    """Refuse a saved plan whose manifest files changed since it was made."""
    paths = body["manifest_paths"]
    if not paths:
        return
    try:
        digest = load_manifests(paths).digest
    except ManifestError as error:
        raise StalePlanError(
            f"{path}: the manifest it was made from no longer loads; make a new "
            f"plan:\n{error}"
        ) from None
    if digest != body["manifest_digest"]:
        raise StalePlanError(
            f"{path}: {', '.join(paths)} changed since the plan was made; "
            "make a new plan"
        )


def managed_count(body: dict[str, Any]) -> int:
    """Return the number of datasets the plan's manifest declares."""
    count = body.get("managed_count")
    return count if isinstance(count, int) else len(body["items"])


def protect_items(plan: Plan, protected: set[str]) -> Plan:
    """Turn the unpublishes of protected datasets into protected items.

    A plan saved before the state file recorded a protection must not undo it.
    """
    items = []
    for item in plan.items:
        if item.kind == UNPUBLISH and item.uid in protected:
            click.echo(f"{item.uid}: protected, so the plan's unpublish is not sent")
            item = replace(item, kind=PROTECTED, reason=PROTECTED_NOTE)
        items.append(item)
    return replace(plan, items=tuple(items))


def run_apply(
    the_plan: Plan,
    client: Client,
    state: StateFile,
    options: ApplyOptions,
    plan_id: str | None = None,
) -> int:
    """Apply a plan, print the results, record the run; return the exit code."""
    if not options.dry_run:
        state.begin_run("apply", the_plan.manifest_digest, dry_run=False)
    busy = sum(
        1
        for item in the_plan.items
        if item.kind == BUSY and item.heading != item.desired
    )
    progress = Progress(len(the_plan.actions) + busy)
    handler = busy_handler(options.on_busy, client, state, timeout=options.timeout)
    try:
        results = apply_plan(
            the_plan,
            client,
            None if options.dry_run else state,
            dry_run=options.dry_run,
            parallelism=options.parallelism,
            plan_id=plan_id,
            handle_busy=handler,
            on_done=progress.advance,
        )
    except KeyboardInterrupt:
        if not options.dry_run:
            state.finish_run("interrupted")
        raise
    finally:
        progress.close()
    if options.wait and not options.dry_run:
        desired = {item.uid: item.desired for item in the_plan.items}
        try:
            results = follow_jobs(
                client, state, results, desired, timeout=options.timeout
            )
        except KeyboardInterrupt:
            state.finish_run("interrupted")
            raise
    click.echo(render_results(results, client.domain, dry_run=options.dry_run))
    code = apply_exit_code(the_plan, results)
    if not options.dry_run:
        state.finish_run(RUN_OUTCOMES.get(code, "failed"))
        click.echo(f"State file: {state.path}")
    return code


RUN_OUTCOMES = {EXIT_OK: "succeeded", EXIT_PARTIAL: "partial", EXIT_STALE: "stale"}


class _no_lock:
    """Stand in for the lock in a dry run, which writes nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None
