"""Faults over real HTTP: throttling, 5xx, lost responses, killed runs, locks,
guards, busy datasets, apply --wait and secrets, against simulators on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from reconciler.cli_options import EXIT_LOCKED
from reconciler.simulator import (
    DEFAULT_RIGHTS,
    SimulatedDataset,
    Simulator,
    SimulatorConfig,
    generate_datasets,
)
from tests.conftest import API_KEY, write_manifest

StartSimulator = Callable[..., Simulator]
RunCli = Callable[..., Result]

HOST = socket.gethostname()
SCRIPT = Path(sys.executable).with_name("ods-reconcile")
JOB_ID = r"[0-9a-f]{40}"


# --- Helpers -----------------------------------------------------------------------


def inverted(portal: list[SimulatedDataset]) -> list[tuple[str, str]]:
    """Return manifest entries that want every dataset in the other state."""
    return [
        (dataset.uid, "unpublished" if dataset.published else "published")
        for dataset in portal
    ]


def read_state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def recorded_job_ids(state: dict[str, Any]) -> set[str]:
    """Return the job ids of the state file's records that have one."""
    return {
        record["job_id"] for record in state["datasets"].values() if record["job_id"]
    }


def issued_job_ids(simulator: Simulator) -> set[str]:
    return {job["job_id"] for job in simulator.stats()["jobs"]}


def repeated_jobs(simulator: Simulator) -> dict[tuple[str, str], int]:
    """Return the (dataset_uid, action) pairs the simulator issued a job for twice."""
    pairs = Counter(
        (job["dataset_uid"], job["action"]) for job in simulator.stats()["jobs"]
    )
    return {pair: count for pair, count in pairs.items() if count > 1}


def writes(simulator: Simulator) -> int:
    return sum(
        count
        for route, count in simulator.stats()["requests"].items()
        if route.startswith("PUT ")
    )


def wait_settled(simulator: Simulator, uids: list[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(simulator.snapshot(uid)["name"] != "idle" for uid in uids):
        assert time.monotonic() < deadline, "datasets did not settle"
        time.sleep(0.05)


def summary_line(result: Result) -> str:
    """Return the plan's summary: the last line of its text output."""
    return result.stdout.rstrip("\n").splitlines()[-1]


def cli_command(*args: str) -> list[str]:
    """Return the command line of the installed ods-reconcile."""
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "reconciler", *args]


def cli_environment(**variables: str) -> dict[str, str]:
    """Return this environment with the given credentials in place of ours."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("ODS_API_KEY", "ODS_USERNAME", "ODS_PASSWORD", "ODS_DOMAIN")
    }
    environment.update(variables)
    return environment


def start_apply(
    manifest: Path, simulator: Simulator, output: Path, *options: str
) -> subprocess.Popen[bytes]:
    """Start `ods-reconcile apply` as a child process that writes its output to files.

    Files rather than pipes, because the plan of hundreds of datasets can fill
    a pipe buffer that is not read, and a full pipe blocks the child.
    """
    command = cli_command("apply", "--domain", simulator.url, *options, str(manifest))
    with (
        output.with_suffix(".out").open("wb") as stdout,
        output.with_suffix(".err").open("wb") as stderr,
    ):
        return subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            env=cli_environment(ODS_API_KEY=API_KEY),
        )


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collect child processes, and kill and reap those still running after the test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


# --- Throttling and server errors --------------------------------------------------


def test_apply_429_storm_converges(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = generate_datasets(50, seed=1)
    simulator = start_simulator(portal, throttle_rate=0.5, retry_after=0, seed=1)
    manifest = write_manifest(tmp_path / "m.yaml", inverted(portal), simulator.url)

    # One request at a time makes the simulator draw its 429 responses in the same
    # order on every run, so the outcome does not depend on thread scheduling.
    plan = run_cli("plan", "--parallelism", "1", str(manifest))
    apply = run_cli(
        "apply", "--parallelism", "1", "--allow-unpublish", "50", str(manifest)
    )

    assert simulator.stats()["responses"]["429"] > 50
    assert plan.exit_code == 0, plan.output
    assert apply.exit_code == 0, apply.output
    jobs = Counter(job["dataset_uid"] for job in simulator.stats()["jobs"])
    assert jobs == Counter(dataset.uid for dataset in portal)


def test_apply_429_storm_sends_no_job_twice(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = generate_datasets(50, seed=2)
    # The listing is the run's first request, so its seeded draws are the same
    # on every run and it succeeds. The later, concurrent requests vary.
    simulator = start_simulator(portal, throttle_rate=0.5, retry_after=0, seed=0)
    manifest = write_manifest(tmp_path / "m.yaml", inverted(portal), simulator.url)

    result = run_cli("apply", "--allow-unpublish", "50", str(manifest))

    assert result.exit_code in (0, 3), result.output
    assert simulator.stats()["responses"]["429"] > 50
    assert repeated_jobs(simulator) == {}
    state = read_state(tmp_path / "m.state.json")
    assert issued_job_ids(simulator) == recorded_job_ids(state)
    without_job = {dataset.uid for dataset in portal} - {
        job["dataset_uid"] for job in simulator.stats()["jobs"]
    }
    for uid in without_job:
        assert re.search(
            rf"^(\? unreadable  |  \w+ +){uid}\b.*429", result.stdout, re.M
        )


def test_apply_5xx_converges_on_second_run(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = generate_datasets(100, seed=3)
    simulator = start_simulator(portal, error_rate=0.2)
    manifest = write_manifest(tmp_path / "m.yaml", inverted(portal), simulator.url)
    options = ("--parallelism", "4", "--allow-unpublish", "100")

    first = run_cli("apply", *options, str(manifest))
    assert first.exit_code in (0, 3), first.output
    second = run_cli("apply", *options, str(manifest))
    assert second.exit_code == 0, second.output

    assert simulator.stats()["responses"]["503"] > 20
    wait_settled(simulator, [dataset.uid for dataset in portal])
    plan = run_cli("plan", str(manifest))
    assert plan.exit_code == 0, plan.output
    assert summary_line(plan) == "0 to publish, 0 to unpublish, 100 unchanged"
    assert repeated_jobs(simulator) == {}
    # The simulator sends a 503 before it acts, so apply received every job id
    # the simulator issued, and each must be in the state file.
    state = read_state(tmp_path / "m.state.json")
    assert issued_job_ids(simulator) <= recorded_job_ids(state)


def test_apply_lost_answer_sends_once(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = [
        SimulatedDataset("da_lost01", "roads", published=False),
        SimulatedDataset("da_lost02", "trees", published=False),
    ]
    simulator = start_simulator(portal, drop_after_write_rate=1.0)
    entries = [("da_lost01", "published"), ("da_lost02", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)

    result = run_cli("apply", str(manifest))

    assert result.exit_code == 0, result.output
    assert simulator.stats()["responses"]["dropped"] == 2
    jobs = [(job["dataset_uid"], job["action"]) for job in simulator.stats()["jobs"]]
    assert sorted(jobs) == [("da_lost01", "publish"), ("da_lost02", "publish")]
    for uid in ("da_lost01", "da_lost02"):
        assert re.search(
            rf"^  publish    {uid}: job unknown; the answer was lost \(PUT "
            rf"/datasets/{uid}/publish: request failed: .+\) but the portal shows "
            r"the action under way",
            result.stdout,
            re.M,
        ), result.stdout
    records = read_state(tmp_path / "m.state.json")["datasets"]
    for uid in ("da_lost01", "da_lost02"):
        assert records[uid]["outcome"] == "submitted"
        assert records[uid]["job_id"] is None
        assert records[uid]["action"] == "publish"


# --- Killed and concurrent runs ----------------------------------------------------


def wait_for_submitted(
    child: subprocess.Popen[bytes], state_path: Path, count: int
) -> None:
    """Poll the state file until it records `count` submitted actions."""
    deadline = time.monotonic() + 30
    while True:
        assert child.poll() is None, "apply ended before it was killed"
        assert time.monotonic() < deadline, "apply submitted too few actions"
        if state_path.exists():
            # Every write is a rename of a complete file, so each read parses.
            records = read_state(state_path)["datasets"].values()
            if sum(1 for r in records if r["outcome"] == "submitted") >= count:
                return
        time.sleep(0.01)


def test_apply_killed_half_way_resumes(
    tmp_path: Path,
    start_simulator: StartSimulator,
    run_cli: RunCli,
    children: list[subprocess.Popen[bytes]],
) -> None:
    portal = generate_datasets(300, seed=4)
    simulator = start_simulator(portal, latency=0.02)
    manifest = write_manifest(tmp_path / "m.yaml", inverted(portal))
    state_path = tmp_path / "m.state.json"
    allow = ("--allow-unpublish", "300")
    options = ("--domain", simulator.url, *allow)

    child = start_apply(
        manifest, simulator, tmp_path / "killed", "--parallelism", "2", *allow
    )
    children.append(child)
    wait_for_submitted(child, state_path, 30)
    os.kill(child.pid, signal.SIGKILL)
    # Reaped, so that its pid no longer exists and the lock reads as stale.
    assert child.wait() == -signal.SIGKILL

    after_kill = read_state(state_path)
    assert recorded_job_ids(after_kill) <= issued_job_ids(simulator)
    assert after_kill["runs"][-1]["outcome"] == "running"
    pending = {
        uid
        for uid, record in after_kill["datasets"].items()
        if record["outcome"] == "pending"
    }

    locked = run_cli("apply", *options, str(manifest))
    assert locked.exit_code == EXIT_LOCKED, locked.output
    assert f"is held by pid {child.pid} on host {HOST} since " in locked.stderr
    assert "the lock is stale" in locked.stderr
    assert f"ods-reconcile force-unlock {state_path}" in locked.stderr
    unlocked = run_cli("force-unlock", str(state_path))
    assert unlocked.exit_code == 0, unlocked.output
    assert unlocked.stdout.startswith(
        f"Removed the lock of {state_path} held by pid {child.pid} on host {HOST}"
    )

    resumed = run_cli("apply", *options, str(manifest))
    assert resumed.exit_code == 0, resumed.output
    wait_settled(simulator, [dataset.uid for dataset in portal])
    plan = run_cli("plan", "--domain", simulator.url, str(manifest))
    assert summary_line(plan) == "0 to publish, 0 to unpublish, 300 unchanged"
    assert repeated_jobs(simulator) == {}

    state = read_state(state_path)
    assert [run["outcome"] for run in state["runs"]] == ["interrupted", "succeeded"]
    assert recorded_job_ids(state) <= issued_job_ids(simulator)
    # A job id is lost only when the kill falls between the portal's response
    # and the write of the job id. The record then still shows the intent
    # (pending), and the next run finds the action taken and does not repeat it.
    # At most one such request per thread (--parallelism 2) can be in flight.
    missing = issued_job_ids(simulator) - recorded_job_ids(state)
    missing_uids = {
        job["dataset_uid"]
        for job in simulator.stats()["jobs"]
        if job["job_id"] in missing
    }
    assert missing_uids <= pending
    assert len(missing_uids) <= 2
    for uid in missing_uids:
        assert state["datasets"][uid]["outcome"] == "pending"


def test_apply_concurrent_second_run_locked_out(
    tmp_path: Path,
    start_simulator: StartSimulator,
    run_cli: RunCli,
    children: list[subprocess.Popen[bytes]],
) -> None:
    portal = generate_datasets(40, published_fraction=0.0, seed=5)
    simulator = start_simulator(portal, latency=0.03)
    manifest = write_manifest(tmp_path / "m.yaml", inverted(portal))
    state_path = tmp_path / "m.state.json"
    lock_path = tmp_path / "m.state.json.lock"

    first = start_apply(manifest, simulator, tmp_path / "first", "--parallelism", "1")
    children.append(first)
    deadline = time.monotonic() + 10
    while not lock_path.exists():
        assert first.poll() is None, "the first apply ended before it took the lock"
        assert time.monotonic() < deadline, "the first apply took no lock"
        time.sleep(0.01)

    second = run_cli("apply", "--domain", simulator.url, str(manifest))
    assert first.poll() is None, "the first apply ended too soon for this test"
    assert second.exit_code == EXIT_LOCKED, second.output
    assert re.fullmatch(
        rf"Error: {re.escape(str(lock_path))} is held by pid {first.pid} on host "
        rf"{re.escape(HOST)} since \S+ \(apply\); wait for that run to finish\n",
        second.stderr,
    ), second.stderr
    assert second.stdout == ""

    assert first.wait(timeout=30) == 0, tmp_path.joinpath("first.out").read_text()
    jobs = simulator.stats()["jobs"]
    assert sorted(job["dataset_uid"] for job in jobs) == sorted(d.uid for d in portal)
    assert issued_job_ids(simulator) == recorded_job_ids(read_state(state_path))
    assert [run["outcome"] for run in read_state(state_path)["runs"]] == ["succeeded"]


# --- State file backup -------------------------------------------------------------


def test_state_backup_restores_after_corruption(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = [
        SimulatedDataset("da_bak001", "roads", published=False),
        SimulatedDataset("da_bak002", "trees", published=True),
    ]
    simulator = start_simulator(portal)
    manifest = write_manifest(
        tmp_path / "m.yaml", [("da_bak001", "published")], simulator.url
    )
    state_path = tmp_path / "m.state.json"
    backup_path = tmp_path / "m.state.json.bak"

    assert run_cli("apply", str(manifest)).exit_code == 0
    first_job = issued_job_ids(simulator)
    assert backup_path.exists()
    # The backup is the version before the last write, which closed the run.
    assert read_state(backup_path)["runs"][-1]["outcome"] == "running"
    assert read_state(state_path)["runs"][-1]["outcome"] == "succeeded"

    entries = [("da_bak001", "published"), ("da_bak002", "published")]
    write_manifest(manifest, entries, simulator.url)
    wait_settled(simulator, ["da_bak001"])
    second = run_cli("apply", str(manifest))
    assert second.exit_code == 0, second.output
    backup = read_state(backup_path)
    assert recorded_job_ids(backup) == first_job
    assert len(backup["runs"]) == 2

    state_path.write_text('{"version": 1, "datasets": ')
    corrupt = run_cli("apply", str(manifest))
    assert corrupt.exit_code == 1
    assert "restore it from the .bak copy" in corrupt.stderr
    backup_path.replace(state_path)
    restored = run_cli("apply", str(manifest))
    assert restored.exit_code == 0, restored.output
    assert len(simulator.stats()["jobs"]) == 1


# --- Unpublish guard and protection ------------------------------------------------


@pytest.mark.parametrize(
    ("managed", "unpublished"), [(40, 11), (8, 3)], ids=["11-of-40", "3-of-8"]
)
def test_apply_unpublish_guard_refuses(
    tmp_path: Path,
    start_simulator: StartSimulator,
    run_cli: RunCli,
    managed: int,
    unpublished: int,
) -> None:
    portal = generate_datasets(managed, published_fraction=1.0, seed=6)
    simulator = start_simulator(portal)
    entries = [
        (dataset.uid, "unpublished" if number < unpublished else "published")
        for number, dataset in enumerate(portal)
    ]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)

    result = run_cli("apply", str(manifest))

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the plan unpublishes {unpublished} of {managed} managed datasets, "
        "more than 10 or 25%; review the plan, then run again with "
        f"--allow-unpublish {unpublished}\n"
    )
    assert writes(simulator) == 0
    assert not (tmp_path / "m.state.json.lock").exists()


def test_apply_allow_unpublish_proceeds(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = generate_datasets(40, published_fraction=1.0, seed=6)
    simulator = start_simulator(portal)
    entries = [
        (dataset.uid, "unpublished" if number < 11 else "published")
        for number, dataset in enumerate(portal)
    ]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)

    too_few = run_cli("apply", "--allow-unpublish", "10", str(manifest))
    assert too_few.exit_code == 1
    assert writes(simulator) == 0
    result = run_cli("apply", "--allow-unpublish", "11", str(manifest))

    assert result.exit_code == 0, result.output
    assert "11 submitted, 0 failed" in result.stdout
    jobs = simulator.stats()["jobs"]
    assert sorted(job["dataset_uid"] for job in jobs) == sorted(
        uid for uid, state in entries if state == "unpublished"
    )
    assert {job["action"] for job in jobs} == {"unpublish"}


def write_protect_manifest(path: Path, domain: str, protect: str | None) -> Path:
    """Write a manifest that unpublishes da_prot01, with a `protect` line or none."""
    lines = [
        "version: 1",
        f"domain: {domain}",
        "datasets:",
        "  - uid: da_prot01",
        "    state: unpublished",
    ]
    if protect is not None:
        lines.append(f"    protect: {protect}")
    for uid in ("da_keep02", "da_keep03", "da_keep04"):
        lines += [f"  - uid: {uid}", "    state: published"]
    path.write_text("\n".join(lines) + "\n")
    return path


PROTECTED_PORTAL = [
    SimulatedDataset("da_prot01", "archive", published=True),
    SimulatedDataset("da_keep02", "roads", published=True),
    SimulatedDataset("da_keep03", "trees", published=True),
    SimulatedDataset("da_keep04", "census", published=True),
]
PROTECTED_LINE = (
    "# protected   da_prot01 (archive): published, but protected: never "
    "unpublished by this tool; set `protect: false` on its entry to lift the "
    "protection\n"
)


def test_protect_survives_entry_change(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PROTECTED_PORTAL)
    manifest = write_protect_manifest(tmp_path / "m.yaml", simulator.url, "true")
    state_path = tmp_path / "m.state.json"

    applied = run_cli("apply", str(manifest))
    assert applied.exit_code == 0, applied.output
    assert PROTECTED_LINE in applied.stdout
    assert "0 to publish, 0 to unpublish, 3 unchanged, 1 protected\n" in (
        applied.stdout
    )
    assert "Nothing to apply to " in applied.stdout
    assert writes(simulator) == 0
    assert read_state(state_path)["protected"] == ["da_prot01"]
    plan = run_cli("plan", str(manifest))
    assert plan.exit_code == 0, plan.output
    assert PROTECTED_LINE in plan.stdout

    write_protect_manifest(manifest, simulator.url, None)
    plan = run_cli("plan", str(manifest))
    assert PROTECTED_LINE in plan.stdout
    applied = run_cli("apply", str(manifest))
    assert applied.exit_code == 0, applied.output
    assert writes(simulator) == 0
    assert read_state(state_path)["protected"] == ["da_prot01"]

    write_protect_manifest(manifest, simulator.url, "false")
    plan = run_cli("plan", str(manifest))
    assert "- unpublish   da_prot01 (archive): published -> unpublished" in plan.stdout
    applied = run_cli("apply", str(manifest))
    assert applied.exit_code == 0, applied.output
    jobs = [(job["dataset_uid"], job["action"]) for job in simulator.stats()["jobs"]]
    assert jobs == [("da_prot01", "unpublish")]
    assert read_state(state_path)["protected"] == []


def test_protect_shown_before_first_apply(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PROTECTED_PORTAL)
    manifest = write_protect_manifest(tmp_path / "m.yaml", simulator.url, "true")

    plan = run_cli("plan", str(manifest))

    assert plan.exit_code == 0, plan.output
    assert PROTECTED_LINE in plan.stdout


def test_protect_saved_plan_before_first_apply(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PROTECTED_PORTAL)
    manifest = write_protect_manifest(tmp_path / "m.yaml", simulator.url, "true")
    saved = tmp_path / "plan.json"
    assert run_cli("plan", "--out", str(saved), str(manifest)).exit_code == 0

    applied = run_cli("apply", str(saved))

    assert applied.exit_code == 0, applied.output
    assert simulator.stats()["jobs"] == []


# --- Busy datasets: --on-busy ------------------------------------------------------

# A republish under way on a dataset that the manifest wants unpublished.
REPUBLISHING = SimulatedDataset(
    "da_busy01", "roads", published=True, status="processing", busy_seconds=0.5
)


def busy_manifest(tmp_path: Path, simulator: Simulator) -> Path:
    return write_manifest(
        tmp_path / "m.yaml", [("da_busy01", "unpublished")], simulator.url
    )


def test_on_busy_skip_reports_skipped(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator([REPUBLISHING])
    result = run_cli(
        "apply", "--on-busy", "skip", str(busy_manifest(tmp_path, simulator))
    )

    assert result.exit_code == 3, result.output
    assert re.search(
        r"^  none       da_busy01: skipped, busy: processing since \S+; heads to "
        r"published, not unpublished: plan again once it settles$",
        result.stdout,
        re.M,
    ), result.stdout
    assert writes(simulator) == 0


def test_on_busy_wait_then_unpublishes(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator([REPUBLISHING])
    manifest = busy_manifest(tmp_path, simulator)
    result = run_cli(
        "apply",
        "--allow-unpublish",
        "1",
        "--on-busy",
        "wait",
        "--timeout",
        "5",
        str(manifest),
    )

    assert result.exit_code == 0, result.output
    assert re.search(rf"^  unpublish  da_busy01: job {JOB_ID}\b", result.stdout, re.M)
    jobs = [(job["dataset_uid"], job["action"]) for job in simulator.stats()["jobs"]]
    assert jobs == [("da_busy01", "unpublish")]


def test_on_busy_abort_then_unpublishes(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    republishing_long = SimulatedDataset(
        "da_busy01", "roads", published=True, status="processing", busy_seconds=60
    )
    simulator = start_simulator([republishing_long])
    result = run_cli(
        "apply",
        "--allow-unpublish",
        "1",
        "--on-busy",
        "abort",
        str(busy_manifest(tmp_path, simulator)),
    )

    assert result.exit_code == 0, result.output
    assert re.search(
        rf"^  unpublish  da_busy01: job {JOB_ID}; aborted the publish under "
        rf"way \(job {JOB_ID}\)",
        result.stdout,
        re.M,
    ), result.stdout
    jobs = [(job["dataset_uid"], job["action"]) for job in simulator.stats()["jobs"]]
    assert jobs == [("da_busy01", "abort_processing"), ("da_busy01", "unpublish")]


def test_on_busy_wait_times_out_on_unknown_heading(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    queued = SimulatedDataset(
        "da_busy01", "roads", published=True, status="queued", busy_seconds=60
    )
    simulator = start_simulator([queued])
    manifest = busy_manifest(tmp_path, simulator)
    result = run_cli(
        "apply",
        "--allow-unpublish",
        "1",
        "--on-busy",
        "wait",
        "--timeout",
        "0.2",
        str(manifest),
    )

    assert result.exit_code == 3, result.output
    assert re.search(
        r"^  none       da_busy01: skipped, still busy after waiting 0.2s: queued "
        r"since \S+; outcome unknown$",
        result.stdout,
        re.M,
    ), result.stdout
    assert writes(simulator) == 0


# --- apply --wait ------------------------------------------------------------------


def test_apply_wait_reports_job_failed(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = [
        SimulatedDataset("da_fail01", "roads", False, fail_publish="Source gone"),
        SimulatedDataset("da_fine02", "trees", published=False),
    ]
    simulator = start_simulator(portal)
    entries = [("da_fail01", "published"), ("da_fine02", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)

    result = run_cli("apply", "--wait", "--timeout", "10", str(manifest))

    assert result.exit_code == 3, result.output
    assert re.search(
        rf"^  publish    da_fail01: job {JOB_ID}, failed: ended in error: "
        r"Source gone$",
        result.stdout,
        re.M,
    ), result.stdout
    assert (
        "2 submitted, 0 failed; 1 job succeeded, 1 job failed, 0 jobs timed out\n"
        in result.stdout
    )
    record = read_state(tmp_path / "m.state.json")["datasets"]["da_fail01"]
    assert record["settled"]["outcome"] == "failed"
    assert record["settled"]["detail"] == "ended in error: Source gone"


def test_apply_wait_reports_succeeded(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    portal = [
        SimulatedDataset("da_wait01", "roads", published=False),
        SimulatedDataset("da_wait02", "trees", published=True),
        SimulatedDataset("da_wait03", "census", published=True),
        SimulatedDataset("da_wait04", "events", published=True),
    ]
    simulator = start_simulator(portal)
    entries = [
        ("da_wait01", "published"),
        ("da_wait02", "unpublished"),
        ("da_wait03", "published"),
        ("da_wait04", "published"),
    ]
    manifest = write_manifest(tmp_path / "m.yaml", entries, simulator.url)

    result = run_cli("apply", "--wait", "--timeout", "10", str(manifest))

    assert result.exit_code == 0, result.output
    for action, uid in (("publish  ", "da_wait01"), ("unpublish", "da_wait02")):
        assert re.search(
            rf"^  {action}  {uid}: job {JOB_ID}, succeeded$", result.stdout, re.M
        ), result.stdout
    assert (
        "2 submitted, 0 failed; 2 jobs succeeded, 0 jobs failed, 0 jobs timed out\n"
        in result.stdout
    )
    records = read_state(tmp_path / "m.state.json")["datasets"]
    assert records["da_wait01"]["settled"]["outcome"] == "succeeded"
    assert records["da_wait02"]["settled"]["outcome"] == "succeeded"


def timed_out_apply(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> Result:
    """Apply --wait a publish of 4 seconds with a timeout of 0.1 second."""
    simulator = start_simulator(
        [SimulatedDataset("da_slow01", "roads", published=False)], step_seconds=2
    )
    manifest = write_manifest(
        tmp_path / "m.yaml", [("da_slow01", "published")], simulator.url
    )
    return run_cli("apply", "--wait", "--timeout", "0.1", str(manifest))


def test_apply_wait_timeout_recorded(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    result = timed_out_apply(tmp_path, start_simulator, run_cli)

    assert re.search(
        rf"^  publish    da_slow01: job {JOB_ID}, timed out: still running after "
        r"0.1s; outcome unknown$",
        result.stdout,
        re.M,
    ), result.stdout
    assert (
        "1 submitted, 0 failed; 0 jobs succeeded, 0 jobs failed, 1 job timed out\n"
        in result.stdout
    )
    record = read_state(tmp_path / "m.state.json")["datasets"]["da_slow01"]
    assert record["outcome"] == "submitted"
    assert record["settled"]["outcome"] == "timed_out"


def test_apply_wait_timeout_exits_partial(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    result = timed_out_apply(tmp_path, start_simulator, run_cli)
    assert result.exit_code == 3, result.output


# --- Secrets -----------------------------------------------------------------------

SECRET_KEY = "sk-ods-7Qm2ZxLp9RvB4nTw"
WRONG_KEY = "sk-ods-WRONG-5hJk8PqYc3"
USERNAME = "alice"
PASSWORD = "pw-ods-Hf6Ud1Ks0Nx2"
BASIC_TOKEN = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()


class EchoHandler(BaseHTTPRequestHandler):
    """A portal of one unpublished dataset whose write errors echo the credentials."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/api/management/v2/datasets?"):
            item = {
                "dataset_uid": "da_echo01",
                "dataset_id": "echo",
                "metas": {"publishing": {"published": False}},
                "status": {"name": "idle", "since": "2026-01-01T00:00:00+00:00"},
            }
            self.send_json(200, {"datasets": [item], "rows": 100, "nhits": 1})
        else:
            self.send_json(200, {"published": False, "name": "idle"})

    def do_PUT(self) -> None:
        authorization = self.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        decoded = base64.b64decode(value).decode() if scheme == "Basic" else value
        message = f"credentials {authorization!r} ({decoded}) may not publish"
        body = {"status_code": 400, "error_key": "Echo", "message": message}
        self.send_json(400, body)

    def send_json(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    """Serve EchoHandler on 127.0.0.1 and yield its root URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def secret_simulator() -> Iterator[Simulator]:
    """Start a simulator that accepts SECRET_KEY and USERNAME with PASSWORD."""
    config = SimulatorConfig(
        api_keys={SECRET_KEY: DEFAULT_RIGHTS},
        users={USERNAME: (PASSWORD, DEFAULT_RIGHTS)},
        step_seconds=0.05,
    )
    with Simulator(
        [
            SimulatedDataset("da_sec001", "roads", published=False),
            SimulatedDataset("da_sec002", "trees", published=True),
            SimulatedDataset("da_sec003", "census", published=True),
            SimulatedDataset("da_sec004", "events", published=False),
        ],
        config,
    ) as simulator:
        yield simulator


def run_child(folder: Path, *args: str, **credentials: str) -> str:
    """Run ods-reconcile -vv in a child process; return its stdout and stderr."""
    completed = subprocess.run(
        cli_command("-vv", *args),
        capture_output=True,
        text=True,
        cwd=folder,
        env=cli_environment(**credentials),
        timeout=60,
    )
    return completed.stdout + completed.stderr


def written_files(folder: Path) -> str:
    """Return the text of every file a run left in the folder."""
    return "".join(
        path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()
    )


def test_secrets_never_shown_or_written(
    tmp_path: Path, secret_simulator: Simulator, echo_server: str
) -> None:
    url = secret_simulator.url
    key = {"ODS_API_KEY": SECRET_KEY}
    basic = {"ODS_USERNAME": USERNAME, "ODS_PASSWORD": PASSWORD}
    entries = [("da_sec001", "published"), ("da_sec002", "published")]
    manifest = write_manifest(tmp_path / "m.yaml", entries, url)
    outputs = [
        run_child(tmp_path, "validate", str(manifest), **key),
        run_child(tmp_path, "plan", str(manifest), **key),
        run_child(tmp_path, "plan", "--format", "markdown", str(manifest), **key),
        run_child(tmp_path, "plan", "--format", "json", str(manifest), **key),
        run_child(tmp_path, "plan", "--out", "plan.json", str(manifest), **key),
        run_child(tmp_path, "apply", str(manifest), **key),
        run_child(tmp_path, "apply", "plan.json", **key),
        run_child(tmp_path, "drift", str(manifest), **key),
        run_child(tmp_path, "export", "--domain", url, **key),
        run_child(tmp_path, "export", "--domain", url, "--out", "all.yaml", **key),
        run_child(tmp_path, "plan", str(manifest), ODS_API_KEY=WRONG_KEY),
        run_child(tmp_path, "plan", str(manifest), **basic),
    ]
    wait_settled(secret_simulator, ["da_sec001"])
    write_manifest(manifest, [*entries, ("da_sec004", "published")], url)
    outputs.append(run_child(tmp_path, "apply", "--wait", str(manifest), **basic))
    (tmp_path / "echo").mkdir()
    echo = write_manifest(tmp_path / "echo" / "e.yaml", [("da_echo01", "published")])
    for credentials in (key, basic):
        outputs.append(
            run_child(
                tmp_path, "apply", str(echo), "--domain", echo_server, **credentials
            )
        )

    everything = "\n".join(outputs) + written_files(tmp_path)
    assert "Applied the plan to" in everything
    assert "PUT /datasets/da_echo01/publish: HTTP 400: credentials" in everything
    assert "the API key in ODS_API_KEY was rejected" in everything
    assert " succeeded, 0 jobs failed" in everything
    assert len(secret_simulator.stats()["jobs"]) == 2
    for secret in (SECRET_KEY, WRONG_KEY, PASSWORD):
        assert secret not in everything


def test_secrets_basic_header_echo_masked(tmp_path: Path, echo_server: str) -> None:
    echo = write_manifest(tmp_path / "e.yaml", [("da_echo01", "published")])
    output = run_child(
        tmp_path,
        "apply",
        str(echo),
        "--domain",
        echo_server,
        ODS_USERNAME=USERNAME,
        ODS_PASSWORD=PASSWORD,
    )
    assert "HTTP 400: credentials" in output
    assert BASIC_TOKEN not in output + written_files(tmp_path)


def test_on_busy_wait_never_unpublishes_protected(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator([REPUBLISHING])
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"version: 1\ndomain: {simulator.url}\ndatasets:\n"
        "  - uid: da_busy01\n    state: unpublished\n    protect: true\n"
    )
    for policy in ("wait", "abort"):
        result = run_cli(
            "apply",
            "--allow-unpublish",
            "1",
            "--on-busy",
            policy,
            "--timeout",
            "5",
            str(manifest),
        )
        assert result.exit_code in (0, 3), result.output
        assert "protected" in result.stdout
    assert simulator.stats()["jobs"] == []


def test_on_busy_wait_counts_for_the_guard(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator([REPUBLISHING])
    result = run_cli(
        "apply", "--on-busy", "wait", str(busy_manifest(tmp_path, simulator))
    )
    assert result.exit_code == 1
    assert "--allow-unpublish 1" in result.stderr
    assert simulator.stats()["jobs"] == []
