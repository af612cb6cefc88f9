from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.simulator import (
    DEFAULT_RIGHTS,
    SimulatedDataset,
    Simulator,
    SimulatorConfig,
)

API_KEY = "test-key-9f8e7d6c5b4a"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Simulator]]:
    """Start simulators on 127.0.0.1 that accept API_KEY; stop them after the test."""
    started: list[Simulator] = []

    def start(datasets: list[SimulatedDataset], **knobs: object) -> Simulator:
        knobs.setdefault("step_seconds", 0.05)
        config = SimulatorConfig(api_keys={API_KEY: DEFAULT_RIGHTS}, **knobs)  # type: ignore[arg-type]
        simulator = Simulator(datasets, config)
        simulator.start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Run ods-reconcile in-process with API_KEY in the environment."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        environment = {"ODS_API_KEY": API_KEY, "ODS_DOMAIN": None}
        environment.update(env or {})
        return CliRunner().invoke(cli, list(args), env=environment)  # type: ignore[arg-type]

    return run


def write_manifest(
    path: Path, entries: list[tuple[str, str]], domain: str = ""
) -> Path:
    """Write a manifest of (uid, state) entries."""
    lines = ["version: 1"]
    if domain:
        lines.append(f"domain: {domain}")
    lines.append("datasets:" if entries else "datasets: []")
    for uid, state in entries:
        lines += [f"  - uid: {uid}", f"    state: {state}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_requests(simulator: Simulator) -> int:
    """Count the requests other than GET that the simulator received."""
    return sum(
        count
        for route, count in simulator.stats()["requests"].items()
        if not route.startswith("GET ")
    )


def wait_idle(simulator: Simulator, uids: list[str], timeout: float = 10.0) -> None:
    """Wait until the datasets are idle again, failing the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while any(simulator.snapshot(uid)["name"] != "idle" for uid in uids):
        assert time.monotonic() < deadline, "datasets did not settle"
        time.sleep(0.05)
