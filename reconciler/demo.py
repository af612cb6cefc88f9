"""The quick-start demo: plan and apply the example manifest on a local simulator."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

import click

from reconciler.apply import apply_plan
from reconciler.client import Client, Credentials
from reconciler.manifest import load_manifests
from reconciler.observe import plan_manifest
from reconciler.output import render_plan, render_results
from reconciler.plan import BUSY, Plan
from reconciler.simulator import DEFAULT_RIGHTS, Simulator, SimulatorConfig, load_seed
from reconciler.state import StateFile


def examples_folder() -> Path:
    """Find the examples: inside an installed wheel, or beside the package."""
    package = Path(__file__).resolve().parent
    installed = package / "_examples"
    return installed if installed.is_dir() else package.parent / "examples"


EXAMPLES = examples_folder()
SETTLE_TIMEOUT = 10.0


def plan_for(client: Client, manifest_path: Path) -> Plan:
    """Plan the manifest against the portal the client talks to."""
    return plan_manifest(client, load_manifests([manifest_path]))


def wait_until_settled(client: Client, manifest_path: Path, uids: set[str]) -> Plan:
    """Plan again until none of the given datasets is busy, or a timeout passes."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        plan = plan_for(client, manifest_path)
        busy = [i for i in plan.items if i.kind == BUSY and i.uid in uids]
        if not busy or time.monotonic() > deadline:
            return plan
        time.sleep(0.2)


@click.command("demo")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("ods-demo.state.json"),
    show_default=True,
    help="State file the demo writes; replaced at each demo run.",
)
def demo_command(state_path: Path) -> None:
    """Plan and apply examples/manifest.yaml against a local simulator."""
    manifest_path = EXAMPLES / "manifest.yaml"
    seed_path = EXAMPLES / "simulator" / "riverton-seed.yaml"
    api_key = secrets.token_hex(16)
    config = SimulatorConfig(api_keys={api_key: DEFAULT_RIGHTS})

    with Simulator(load_seed(seed_path), config) as simulator:
        click.echo(f"Simulator of the Management API at {simulator.api_url}")
        click.echo(f"seeded from {seed_path}")
        client = Client(simulator.api_url, Credentials(api_key=api_key))
        domain = simulator.url

        click.echo(
            f"\n$ ods-reconcile plan {manifest_path} --domain {domain} "
            "--report-unmanaged\n"
        )
        plan = plan_for(client, manifest_path)
        click.echo(render_plan(plan))
        plan = replace(plan, unmanaged=())

        click.echo(f"\n$ ods-reconcile apply {manifest_path} --domain {domain}\n")
        state_path.unlink(missing_ok=True)
        state = StateFile.load(state_path, client.domain)
        state.begin_run("apply", plan.manifest_digest, dry_run=False)
        results = apply_plan(plan, client, state)
        state.finish_run(
            "succeeded" if all(r.succeeded for r in results) else "partial"
        )
        click.echo(render_results(results, client.domain))

        click.echo("\nWaiting for the jobs to finish, then planning again:\n")
        acted = {result.uid for result in results}
        settled = wait_until_settled(client, manifest_path, acted)
        click.echo(render_plan(replace(settled, unmanaged=())))
        client.close()

    jobs = sum(1 for result in results if result.job_id)
    click.echo(f"\nState file with {jobs} job ids: {state_path.resolve()}")
