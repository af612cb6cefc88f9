"""Pull-request, merge and schedule workflows over real HTTP against a simulator."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import requests
from click.testing import Result

from reconciler.cli_options import EXIT_CODES
from reconciler.simulator import SimulatedDataset, Simulator
from tests.conftest import API_KEY, ROOT, wait_idle, write_manifest

StartSimulator = Callable[..., Simulator]
RunCli = Callable[..., Result]

PORTAL = [
    SimulatedDataset("da_pub001", "roads", published=False),
    SimulatedDataset("da_unp002", "old-budget", published=True),
    SimulatedDataset("da_syn003", "trees", published=True),
    SimulatedDataset("da_xtra04", "events", published=True),
]
DESIRED = [
    ("da_pub001", "published"),
    ("da_unp002", "unpublished"),
    ("da_syn003", "published"),
]


def job_count(simulator: Simulator) -> int:
    return len(simulator.stats()["jobs"])


def act_behind_our_back(simulator: Simulator, uid: str, action: str) -> None:
    """Change a dataset as a person in the back office would."""
    response = requests.put(
        f"{simulator.api_url}/datasets/{uid}/{action}",
        headers={"Authorization": f"Apikey {API_KEY}"},
        timeout=5,
    )
    assert response.status_code == 200


def test_saved_plan_applies_once(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    saved = tmp_path / "plan.json"
    planned = run_cli("plan", "--out", str(saved), str(manifest))
    assert planned.exit_code == 0, planned.output
    assert planned.stderr == f"Plan saved to {saved}\n"
    assert API_KEY not in saved.read_text()

    first = run_cli("apply", "--allow-unpublish", "1", str(saved))
    assert first.exit_code == 0, first.output
    assert first.stdout.endswith(
        f"2 submitted, 0 failed\nState file: {tmp_path / 'm.state.json'}\n"
    )
    assert job_count(simulator) == 2

    second = run_cli("apply", "--allow-unpublish", "1", str(saved))
    assert second.exit_code == 0, second.output
    assert "da_pub001: already applied (job " in second.stdout
    assert "0 submitted, 0 failed, 2 already applied" in second.stdout
    assert job_count(simulator) == 2


def test_saved_plan_refused_when_state_moved(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    saved = tmp_path / "plan.json"
    assert run_cli("plan", "--out", str(saved), str(manifest)).exit_code == 0

    act_behind_our_back(simulator, "da_pub001", "publish")
    wait_idle(simulator, ["da_pub001"])
    result = run_cli("apply", "--allow-unpublish", "1", str(saved))
    assert result.exit_code == 4, result.output
    assert (
        "  publish    da_pub001: REFUSED: live state moved since the plan: "
        "was unpublished (idle), now published (idle)\n"
    ) in result.stdout
    assert "1 submitted, 0 failed, 1 refused as stale" in result.stdout
    jobs = [job["dataset_uid"] for job in simulator.stats()["jobs"]]
    assert jobs == ["da_pub001", "da_unp002"]  # the first is the back-office one


def test_saved_plan_edited_is_rejected(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    saved = tmp_path / "plan.json"
    assert run_cli("plan", "--out", str(saved), str(manifest)).exit_code == 0
    body = json.loads(saved.read_text())
    body["items"][2]["kind"] = "unpublish"
    saved.write_text(json.dumps(body))
    result = run_cli("apply", str(saved))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {saved}: the saved plan was edited after it was made (its plan_id "
        "does not match its content); make a new plan\n"
    )
    assert job_count(simulator) == 0


def test_exit_code_partial_failure(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    entries = [("da_pub001", "published"), ("da_nothere", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)
    result = run_cli("apply", str(manifest))
    assert result.exit_code == 3, result.output
    assert job_count(simulator) == 1


def test_exit_code_error_for_invalid_manifest(tmp_path: Path, run_cli: RunCli) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\ndatasets:\n  - uid: da_a\n    state: off\n")
    result = run_cli("validate", str(manifest))
    assert result.exit_code == 1
    assert result.stderr.endswith("Error: 1 problem found in the manifest\n")


def test_exit_codes_of_plan(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    changes = write_manifest(tmp_path / "c.yaml", DESIRED, simulator.url)
    clean = write_manifest(tmp_path / "n.yaml", DESIRED[2:], simulator.url)
    assert run_cli("plan", "--detailed-exitcode", str(changes)).exit_code == 2
    assert run_cli("plan", "--detailed-exitcode", str(clean)).exit_code == 0
    assert run_cli("plan", str(changes)).exit_code == 0


def test_drift_reports_who_and_exits_2(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    in_sync = [("da_pub001", "unpublished"), ("da_syn003", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", in_sync, simulator.url)
    assert run_cli("drift", str(manifest)).exit_code == 0

    act_behind_our_back(simulator, "da_syn003", "unpublish")
    busy = run_cli("drift", str(manifest))
    assert busy.exit_code == 0, "an unpublish under way is not drift yet"

    wait_idle(simulator, ["da_syn003"])
    result = run_cli("drift", str(manifest))
    assert result.exit_code == 2, result.output
    assert re.search(
        r"  da_syn003 \(trees\): unpublished on the portal, published in the "
        r"manifest; since \S+ by api-key-owner\n",
        result.stdout,
    )


def test_report_unmanaged_lists_without_touching(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    result = run_cli("apply", "--dry-run", str(manifest))
    assert "da_xtra04" not in result.stdout
    report = run_cli("plan", "--report-unmanaged", str(manifest))
    assert (
        "1 dataset on the portal in no manifest:\n  da_xtra04 (events): published\n"
        in (report.stdout)
    )
    assert job_count(simulator) == 0


def test_only_and_exclude_select_datasets(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    only = run_cli("apply", "--only", "da_pub*", str(manifest))
    assert only.exit_code == 0, only.output
    assert [job["dataset_uid"] for job in simulator.stats()["jobs"]] == ["da_pub001"]
    excluded = run_cli(
        "plan", "--exclude", "da_unp002", "--exclude", "da_pub*", str(manifest)
    )
    assert excluded.stdout.endswith("0 to publish, 0 to unpublish, 1 unchanged\n")


def test_github_annotations_for_manifest_problems(
    tmp_path: Path, run_cli: RunCli
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\ndatasets:\n  - uid: da_a\n    state: publised\n")
    result = run_cli("validate", str(manifest), env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"{manifest}:4:12: $.datasets[0].state: 'publised' is not one of"
    )
    assert (
        f"::error file={manifest},line=4,col=12::$.datasets[0].state: 'publised' "
        "is not one of 'published', 'unpublished'\n"
    ) in result.stdout


def test_github_step_summary_gets_markdown(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = run_cli("plan", str(manifest), env=env)
    assert result.exit_code == 0
    text = summary.read_text()
    assert text.startswith("<!-- ods-reconciler-plan -->\n### ods-reconcile plan")
    assert "**1 to publish, 1 to unpublish, 1 unchanged**" in text


def test_plan_markdown_and_json_formats(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    markdown = run_cli("plan", "--format", "markdown", str(manifest))
    assert "| publish | `da_pub001` | roads | unpublished → published |  |" in (
        markdown.stdout
    )
    body = json.loads(run_cli("plan", "--format", "json", str(manifest)).stdout)
    assert [item["kind"] for item in body["items"]] == ["publish", "unpublish", "none"]


def test_exit_code_table_same_in_readme_and_help(run_cli: RunCli) -> None:
    readme = (ROOT / "README.md").read_text()
    help_text = run_cli("--help").stdout
    for code, meaning in EXIT_CODES:
        assert f"| {code} | {meaning} |" in readme
        assert f"{code}  {meaning}" in help_text


def test_saved_plan_refused_after_manifest_change(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    saved = tmp_path / "plan.json"
    assert run_cli("plan", "--out", str(saved), str(manifest)).exit_code == 0
    write_manifest(manifest, DESIRED[:2], simulator.url)
    result = run_cli("apply", "--allow-unpublish", "1", str(saved))
    assert result.exit_code == 4
    assert result.stderr == (
        f"Error: {saved}: {manifest} changed since the plan was made; make a new plan\n"
    )
    assert job_count(simulator) == 0


def test_saved_plan_with_edited_portal_is_rejected(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    manifest = write_manifest(tmp_path / "m.yaml", DESIRED, simulator.url)
    saved = tmp_path / "plan.json"
    assert run_cli("plan", "--out", str(saved), str(manifest)).exit_code == 0
    body = json.loads(saved.read_text())
    body["base_url"] = "http://portal.example.invalid/api/management/v2"
    saved.write_text(json.dumps(body))
    result = run_cli("apply", str(saved))
    assert result.exit_code == 1
    assert "the saved plan was edited after it was made" in result.stderr
    assert job_count(simulator) == 0
