"""End to end over real HTTP: the command line against a simulator on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from reconciler.simulator import SimulatedDataset, Simulator
from tests.conftest import API_KEY, ROOT, wait_idle, write_manifest, write_requests

StartSimulator = Callable[..., Simulator]
RunCli = Callable[..., Result]

PORTAL = [
    SimulatedDataset("da_pub001", "roads", published=False),
    SimulatedDataset("da_unp002", "old-budget", published=True),
    SimulatedDataset("da_syn003", "trees", published=True),
    SimulatedDataset("da_syn004", "census", published=False),
]
DESIRED = [
    ("da_pub001", "published"),
    ("da_unp002", "unpublished"),
    ("da_syn003", "published"),
    ("da_syn004", "unpublished"),
]


def test_plan_prints_changes(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    result = run_cli("plan", str(manifest))
    host = simulator.url.removeprefix("http://")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Plan for {host}: 4 datasets in the manifest\n"
        "\n"
        "+ publish     da_pub001 (roads): unpublished -> published\n"
        "- unpublish   da_unp002 (old-budget): published -> unpublished; "
        "unpublishing removes the records from the search API; realtime sources "
        "without recovery lose them\n"
        "\n"
        "1 to publish, 1 to unpublish, 2 unchanged\n"
    )
    assert result.stderr == ""
    assert write_requests(simulator) == 0


def test_plan_detailed_exitcode(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    assert run_cli("plan", "--detailed-exitcode", str(manifest)).exit_code == 2
    in_sync = write_manifest(tmp_path / "s.yaml", DESIRED[2:], simulator.url)
    assert run_cli("plan", "--detailed-exitcode", str(in_sync)).exit_code == 0


def test_apply_then_plan_is_clean(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)

    assert run_cli("validate", str(manifest)).exit_code == 0
    result = run_cli("apply", str(manifest))
    assert result.exit_code == 0, result.output
    assert "2 submitted, 0 failed" in result.stdout
    state_path = tmp_path / "m.state.json"
    assert f"State file: {state_path}" in result.stdout

    jobs = {job["dataset_uid"]: job["job_id"] for job in simulator.stats()["jobs"]}
    state = json.loads(state_path.read_text())
    recorded = {uid: record["job_id"] for uid, record in state["datasets"].items()}
    assert recorded == jobs
    assert set(jobs) == {"da_pub001", "da_unp002"}
    assert state["runs"][-1]["outcome"] == "succeeded"
    assert state["runs"][-1]["actions"] == 2

    wait_idle(simulator, ["da_pub001", "da_unp002"])
    again = run_cli("plan", "--detailed-exitcode", str(manifest))
    assert again.exit_code == 0, again.output
    assert again.stdout.endswith("0 to publish, 0 to unpublish, 4 unchanged\n")


def test_apply_dry_run_sends_no_write(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    result = run_cli("apply", "--dry-run", str(manifest))
    assert result.exit_code == 0, result.output
    assert "Would send 2 actions to" in result.stdout
    assert "  publish    da_pub001\n" in result.stdout
    assert "Dry run: no publish or unpublish was sent." in result.stdout
    assert write_requests(simulator) == 0
    assert simulator.stats()["jobs"] == []
    assert not (tmp_path / "m.state.json").exists()


def test_plan_reads_listing_then_only_needed_statuses(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    assert run_cli("plan", str(manifest)).exit_code == 0
    assert simulator.stats()["requests"] == {
        "GET /datasets": 1,
        "GET /datasets/{uid}/status": 2,
    }


def test_plan_falls_back_to_status_without_listing_status(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL, listing_status=False)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    result = run_cli("plan", str(manifest))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("1 to publish, 1 to unpublish, 2 unchanged\n")
    assert simulator.stats()["requests"]["GET /datasets/{uid}/status"] == 4


def test_plan_pages_through_small_pages(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = [SimulatedDataset(f"da_{i:04d}", f"d{i}", True) for i in range(250)]
    simulator = start_simulator(portal, max_rows=60)
    desired = [(d.uid, "published") for d in portal]
    manifest = write_manifest(tmp_path / "m.yaml", desired, simulator.url)
    result = run_cli("plan", str(manifest))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("0 to publish, 0 to unpublish, 250 unchanged\n")
    assert simulator.stats()["requests"] == {"GET /datasets": 5}


def test_plan_reports_unknown_uid(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    entries = [*DESIRED, ("da_gone99", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)
    result = run_cli("plan", str(manifest))
    host = simulator.url.removeprefix("http://")
    assert result.exit_code == 1
    assert (
        "? not found   da_gone99: GET /datasets/da_gone99/status: HTTP 404: "
    ) in result.stdout
    assert f"dataset da_gone99 does not exist on {host}" in result.stdout
    assert result.stdout.endswith(
        "1 to publish, 1 to unpublish, 2 unchanged, 1 not found\n"
    )


def test_wrong_key_names_variable_not_value(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    secret = "wrong-key-0123456789"
    result = run_cli("-vv", "plan", str(manifest), env={"ODS_API_KEY": secret})
    assert result.exit_code == 1
    assert "GET /datasets: HTTP 401: " in result.stderr
    assert "the API key in ODS_API_KEY was rejected" in result.stderr
    assert secret not in result.output


def test_missing_credentials(tmp_path: Path, run_cli: RunCli) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, "http://127.0.0.1:9")
    result = run_cli("plan", str(manifest), env={"ODS_API_KEY": ""})
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: no credentials: set ODS_API_KEY (recommended), "
        "or ODS_USERNAME and ODS_PASSWORD\n"
    )


def test_corrupt_state_file_is_left_untouched(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    state_path = tmp_path / "m.state.json"
    state_path.write_text('{"version": 1, "domain": ')
    result = run_cli("apply", str(manifest))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: {state_path}:1:26: the state file is not valid JSON"
    )
    assert state_path.read_text() == '{"version": 1, "domain": '
    assert write_requests(simulator) == 0


def test_unknown_state_version_stops_the_run(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    state_path = tmp_path / "m.state.json"
    state_path.write_text('{"version": 7}')
    result = run_cli("apply", str(manifest))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {state_path}: unknown state file version 7, expected 1; "
        "it was left untouched\n"
    )
    assert write_requests(simulator) == 0


def test_apply_again_while_busy_sends_nothing(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL, step_seconds=5.0)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    assert run_cli("apply", str(manifest)).exit_code == 0
    again = run_cli("apply", str(manifest))
    assert again.exit_code == 0, again.output
    assert "~ busy        da_pub001 (roads): queued since " in again.stdout
    assert "heads to published, as desired" in again.stdout
    assert "Nothing to apply to" in again.stdout
    assert len(simulator.stats()["jobs"]) == 2


def test_usage_error_exits_1(run_cli: RunCli) -> None:
    result = run_cli("plan")
    assert result.exit_code == 1
    assert "Missing argument 'MANIFESTS...'" in result.stderr


def test_example_manifest_validates(run_cli: RunCli) -> None:
    result = run_cli("validate", str(ROOT / "examples" / "manifest.yaml"))
    assert result.exit_code == 0
    assert result.stdout == "1 file valid: 16 datasets declared\n"


def test_demo_applies_example(tmp_path: Path, run_cli: RunCli) -> None:
    state_path = tmp_path / "demo.state.json"
    result = run_cli("demo", "--state", str(state_path), env={"ODS_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "2 to publish, 2 to unpublish" in result.stdout
    assert "4 submitted, 0 failed" in result.stdout
    assert f"State file with 4 job ids: {state_path}" in result.stdout
    state = json.loads(state_path.read_text())
    assert len([r for r in state["datasets"].values() if r["job_id"]]) == 4
    assert API_KEY not in result.output


def test_examples_folder_validates(run_cli: RunCli) -> None:
    result = run_cli("validate", str(ROOT / "examples"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "1 file valid: 16 datasets declared\n"
