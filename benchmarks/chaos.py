"""Kill an apply half way under faults, then count what the next runs repair.

A simulator in its own process serves N generated datasets, responds to a share
of requests with 503 (without acting) and another share with 429, and adds
latency. The manifest flips every dataset, so apply has N actions to take.
The first apply is killed with SIGKILL half way; its lock is removed with
force-unlock; then apply runs again until a plan shows no change, at most
three more times. The script prints, and writes as JSON:

- the runs needed after the kill;
- duplicate submissions: (dataset, action) pairs that got more than one job;
- lost job ids: jobs the simulator issued that the state file does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from harness import LISTENING, child_environment, write_manifest

from reconciler.simulator import generate_datasets

SETTLE_SECONDS = 60.0
MAX_RUNS_AFTER_KILL = 3


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--error-rate", type=float, default=0.2)
    parser.add_argument("--throttle-rate", type=float, default=0.2)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument(
        "--kill-after",
        type=float,
        default=0.5,
        help="share of the actions submitted before the kill",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/chaos.json")
    )
    return parser.parse_args()


def start_simulator(options: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    command = [
        *(sys.executable, "-m", "reconciler", "simulator", "--port", "0"),
        *("--generate", str(options.datasets), "--latency", repr(options.latency)),
        *("--error-rate", repr(options.error_rate)),
        *("--throttle-rate", repr(options.throttle_rate), "--retry-after", "0"),
        *("--published-fraction", "0.5", "--random-seed", "0"),
        *("--step-seconds", "0.05"),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_environment(),
        text=True,
    )
    assert process.stdout is not None
    match = LISTENING.search(process.stdout.readline())
    if match is None:
        process.kill()
        raise SystemExit("the simulator did not start")
    return process, match[1]


def reconcile(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *arguments],
        env=child_environment(),
        capture_output=True,
        text=True,
        check=False,
    )


def submitted_count(state_path: Path) -> int:
    """Count the submitted records; the file must parse whenever it is read."""
    if not state_path.exists():
        return 0
    data = json.loads(state_path.read_text(encoding="utf-8"))
    return sum(1 for r in data["datasets"].values() if r["outcome"] == "submitted")


def kill_half_way(arguments: list[str], state_path: Path, target: int) -> int:
    """Start apply, SIGKILL it once `target` actions are recorded; return the count."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *arguments],
        env=child_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while process.poll() is None and submitted_count(state_path) < target:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return submitted_count(state_path)


def simulator_stats(root: str) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False
    with session:
        response = session.get(f"{root}/__simulator__/stats", timeout=30)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def wait_until_clean(manifest: Path, domain: str) -> bool:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        plan = reconcile(
            "plan", "--detailed-exitcode", str(manifest), "--domain", domain
        )
        if plan.returncode == 0 and "busy" not in plan.stdout.splitlines()[-1]:
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    options = parse_arguments()
    folder = Path(tempfile.mkdtemp(prefix="ods-chaos-"))
    portal = generate_datasets(options.datasets, 0.5, 0)
    manifest = write_manifest(folder / "m.yaml", portal, len(portal))
    state_path = folder / "m.state.json"
    simulator, root = start_simulator(options)
    apply = [
        "apply",
        str(manifest),
        "--domain",
        root,
        "--state",
        str(state_path),
        "--allow-unpublish",
        str(options.datasets),
        "--on-busy",
        "skip",
    ]
    figures: dict[str, Any] = {"settings": vars(options) | {"json": str(options.json)}}
    try:
        started = time.monotonic()
        figures["submitted_at_kill"] = kill_half_way(
            apply, state_path, int(options.datasets * options.kill_after)
        )
        figures["force_unlock_exit"] = reconcile(
            "force-unlock", str(state_path)
        ).returncode
        runs = []
        for _ in range(MAX_RUNS_AFTER_KILL):
            finished = reconcile(*apply)
            runs.append(finished.returncode)
            if finished.returncode == 0 and wait_until_clean(manifest, root):
                break
            wait_until_clean(manifest, root)
        figures["exit_codes_after_kill"] = runs
        figures["runs_after_kill"] = len(runs)
        figures["converged"] = wait_until_clean(manifest, root)
        figures["wall_seconds"] = round(time.monotonic() - started, 1)
        stats = simulator_stats(root)
    finally:
        simulator.terminate()
        simulator.wait()

    jobs = stats["jobs"]
    pairs = Counter((job["dataset_uid"], job["action"]) for job in jobs)
    state = json.loads(state_path.read_text(encoding="utf-8"))
    recorded = {r["job_id"] for r in state["datasets"].values() if r["job_id"]}
    figures["jobs_issued"] = len(jobs)
    figures["duplicate_submissions"] = sum(count - 1 for count in pairs.values())
    lost = [job for job in jobs if job["job_id"] not in recorded]
    figures["lost_job_ids"] = len(lost)
    # A job whose record is still "pending" was in flight when the process was
    # killed: the portal responded, but the process was gone before it could
    # record the job id.
    figures["lost_in_flight_at_kill"] = sum(
        1
        for job in lost
        if state["datasets"].get(job["dataset_uid"], {}).get("outcome") == "pending"
    )
    figures["responses"] = stats["responses"]
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    for name in (
        "submitted_at_kill",
        "runs_after_kill",
        "exit_codes_after_kill",
        "converged",
        "jobs_issued",
        "duplicate_submissions",
        "lost_job_ids",
        "responses",
        "wall_seconds",
    ):
        print(f"{name}: {figures[name]}")


if __name__ == "__main__":
    main()
