"""Start the simulator and the measured commands in processes of their own.

The simulator runs in one process, the command it serves in another, so that
neither waits for the other's global interpreter lock. Each command runs under
measure_child.py, which reports its wall time, CPU time and peak RSS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests

from reconciler.simulator import SimulatedDataset

MEASURE_CHILD = Path(__file__).resolve().parent / "measure_child.py"
# Passed to the simulator and to generate_datasets, so both see the same portal.
PUBLISHED_FRACTION = 0.5
RANDOM_SEED = 0
# Share of the managed datasets out of sync in a plan: a realistic drift.
DRIFT_FRACTION = 0.02
API_KEY = "benchmark-key"
# Variables of the caller's environment that would change what the CLI does.
REMOVED_VARIABLES = (
    "ODS_DOMAIN",
    "ODS_USERNAME",
    "ODS_PASSWORD",
    "GITHUB_ACTIONS",
    "GITHUB_STEP_SUMMARY",
)
LISTENING = re.compile(r"Simulator listening on (http://127\.0\.0\.1:\d+)(/\S+)")


class BenchmarkError(Exception):
    """A measurement could not be made or measured something else."""


@dataclass(frozen=True)
class Finished:
    """A child process's exit code, output and resource use."""

    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float


def drift_count(datasets: int) -> int:
    """Count the datasets out of sync in a plan of this size, at least one."""
    return max(1, round(datasets * DRIFT_FRACTION))


def write_manifest(path: Path, portal: Sequence[SimulatedDataset], flips: int) -> Path:
    """Write a manifest of the portal's datasets, `flips` of them in the other state.

    The flipped datasets are spread evenly, so that any prefix of the manifest
    has its share of them.
    """
    flipped = {number * len(portal) // flips for number in range(flips)}
    lines = ["version: 1", "datasets:"]
    for number, dataset in enumerate(portal):
        published = dataset.published != (number in flipped)
        lines += [
            f"  - uid: {dataset.uid}",
            f"    id: {dataset.dataset_id}",
            f"    state: {'published' if published else 'unpublished'}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def child_environment() -> dict[str, str]:
    """Return the environment of every child: the caller's, with our API key."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in REMOVED_VARIABLES
    }
    environment["ODS_API_KEY"] = API_KEY
    return environment


def run_child(command: Sequence[str]) -> Finished:
    """Run a command to its end and measure its wall time, CPU time and peak RSS."""
    with (
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
        tempfile.TemporaryDirectory() as folder,
    ):
        result_path = Path(folder) / "figures.json"
        launcher = [sys.executable, str(MEASURE_CHILD), str(result_path)]
        subprocess.run(
            [*launcher, *command], stdout=stdout, stderr=stderr, env=child_environment()
        )
        stdout.seek(0)
        stderr.seek(0)
        output = stdout.read().decode(errors="replace")
        errors = stderr.read().decode(errors="replace")
        if not result_path.exists():
            raise BenchmarkError(f"failed to run {command[:4]}: {errors[-2000:]}")
        figures = json.loads(result_path.read_text(encoding="utf-8"))
        return Finished(
            returncode=figures["returncode"],
            stdout=output,
            stderr=errors,
            wall_seconds=figures["wall_seconds"],
            cpu_seconds=figures["cpu_seconds"],
            peak_rss_mb=figures["peak_rss_bytes"] / 1e6,
        )


def checked(finished: Finished, description: str) -> Finished:
    """Return a finished child, or raise if it failed."""
    if finished.returncode != 0:
        stderr = finished.stderr[-2000:]
        raise BenchmarkError(
            f"{description} exited with {finished.returncode}: {stderr}"
        )
    return finished


@dataclass(frozen=True)
class RunningSimulator:
    """The URLs of a simulator started for one measurement."""

    api_url: str
    stats_url: str

    def requests_by_route(self) -> dict[str, int]:
        """Read the simulator's tally of API requests, by route."""
        session = requests.Session()
        session.trust_env = False
        with session:
            response = session.get(self.stats_url, timeout=30)
        response.raise_for_status()
        tally: dict[str, int] = response.json()["requests"]
        return tally


@contextmanager
def simulator(datasets: int, latency: float) -> Iterator[RunningSimulator]:
    """Serve `datasets` generated datasets on 127.0.0.1 in another process."""
    command = [
        *(sys.executable, "-m", "reconciler", "simulator", "--port", "0"),
        *("--generate", str(datasets), "--latency", repr(latency)),
        *("--published-fraction", repr(PUBLISHED_FRACTION)),
        *("--random-seed", str(RANDOM_SEED)),
    ]
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_environment(),
            text=True,
        )
        try:
            yield _started(process, stderr)
        finally:
            _stop(process)


def _started(process: subprocess.Popen[str], stderr: TextIO) -> RunningSimulator:
    assert process.stdout is not None
    line = process.stdout.readline()
    match = LISTENING.search(line)
    if match is None:
        _stop(process)
        stderr.seek(0)
        raise BenchmarkError(f"the simulator did not start: {line}{stderr.read()}")
    root = match[1]
    return RunningSimulator(root + match[2], root + "/__simulator__/stats")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
