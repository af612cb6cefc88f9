"""Run benchmarks/run.py in its quick mode and check the figures it writes.

No timing is asserted: the machine's load decides it. Request counts are exact.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT

RUN = ROOT / "benchmarks" / "run.py"
LISTING = "GET /datasets"
STATUS = "GET /datasets/{uid}/status"


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the quick benchmark once for the module; return it and its JSON path."""
    json_path = tmp_path_factory.mktemp("benchmark") / "results.json"
    completed = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return completed, json_path


@pytest.fixture(scope="module")
def results(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> Any:
    completed, json_path = quick_run
    assert json_path.exists(), completed.stderr
    return json.loads(json_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bounds() -> ModuleType:
    """Import benchmarks/bounds.py, which is beside a script, not in a package."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_bounds", ROOT / "benchmarks" / "bounds.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages(datasets: int) -> int:
    return max(1, math.ceil(datasets / 100))


def test_quick_run_exits_zero(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    completed, _ = quick_run
    assert completed.returncode == 0, completed.stderr
    assert "ours/bound" in completed.stdout
    assert "| target" in completed.stdout


def test_quick_run_records_settings(results: Any) -> None:
    settings = results["settings"]
    assert settings["latency_seconds"] == 0.0
    assert len(settings["sizes"]) >= 2
    assert results["cpus"] >= 1
    assert "--quick" in results["command"]
    assert results["date"]


def test_plan_requests_are_pages_and_reads(results: Any) -> None:
    sizes = results["settings"]["sizes"]
    assert [plan["datasets"] for plan in results["plan"]] == sizes
    for plan in results["plan"]:
        datasets, reads = plan["datasets"], plan["out_of_sync"]
        assert reads == max(1, round(datasets * 0.02))
        expected = {LISTING: pages(datasets), STATUS: reads}
        assert plan["ours"]["requests_by_route"] == expected
        assert plan["ours"]["requests"] == pages(datasets) + reads
        assert plan["bound"]["requests"] == pages(datasets) + reads


def test_naive_plan_reads_every_dataset(results: Any) -> None:
    for plan in results["plan"]:
        naive = plan["naive"]
        assert naive["requests_by_route"] == {STATUS: plan["datasets"]}
        assert naive["requests"] == plan["datasets"]
        assert naive["extrapolated_from"] is None
        assert plan["naive_bound"]["requests"] == plan["datasets"]


def test_apply_requests_match_bound(results: Any) -> None:
    apply = results["apply"]
    datasets, changes = apply["datasets"], apply["changes"]
    routes = apply["ours"]["requests_by_route"]
    writes = sum(count for route, count in routes.items() if route.startswith("PUT"))
    assert datasets == max(results["settings"]["sizes"])
    assert changes == results["settings"]["changes"]
    assert writes == changes
    assert routes[LISTING] == 2 * pages(datasets)
    assert routes[STATUS] == changes
    assert apply["ours"]["requests"] == apply["bound"]["requests"]


def test_naive_apply_requests(results: Any) -> None:
    apply = results["apply"]
    naive = apply["naive"]
    writes = sum(
        count
        for route, count in naive["requests_by_route"].items()
        if route.startswith("PUT")
    )
    assert naive["requests"] == apply["datasets"] + apply["changes"]
    assert naive["requests_by_route"][STATUS] == apply["datasets"]
    assert writes == apply["changes"]


def test_measured_figures_are_plausible(results: Any) -> None:
    measured = [results["apply"]["ours"], results["apply"]["naive"]]
    for plan in results["plan"]:
        measured += [plan["ours"], plan["naive"]]
    measured.append(results["offline"])
    for figures in measured:
        assert figures["wall_seconds"] > 0
        assert figures["wall_seconds"] < 120
        assert figures["cpu_seconds"] > 0
        assert figures["cpu_seconds"] < 120
        # A Python process takes about 10 MB before it imports anything.
        assert figures["peak_rss_mb"] > 5
        assert figures["peak_rss_mb"] < 1000


def test_offline_plan_finds_the_drift(results: Any) -> None:
    offline = results["offline"]
    assert offline["datasets"] == results["settings"]["offline_size"]
    assert offline["steps"]["datasets"] == offline["datasets"]
    assert offline["steps"]["actions"] == offline["out_of_sync"]
    assert offline["out_of_sync"] == round(offline["datasets"] * 0.02)


def test_targets_listed_with_verdicts(results: Any) -> None:
    targets = {
        (target["section"], target["figure"]): target for target in results["targets"]
    }
    requests_targets = [
        target for target in results["targets"] if target["figure"] == "requests"
    ]
    # Without latency the bounds are 0, so the wall-time targets do not apply.
    assert ("plan", "wall_seconds") not in targets
    assert ("apply", "wall_seconds") not in targets
    assert len(requests_targets) == len(results["plan"])
    assert all(target["met"] for target in requests_targets)
    assert targets["offline", "cpu_seconds"]["limit"] == 3.0
    assert targets["offline", "peak_rss_mb"]["limit"] == 300.0


@pytest.mark.parametrize(
    ("datasets", "reads", "rounds"),
    [
        pytest.param(100, 2, 1 + 0 + 1, id="one-page"),
        pytest.param(1000, 20, 1 + 2 + 3, id="ten-pages"),
        pytest.param(10_000, 200, 1 + 13 + 25, id="hundred-pages"),
    ],
)
def test_plan_bound_counts_round_trips(
    bounds: ModuleType, datasets: int, reads: int, rounds: int
) -> None:
    bound = bounds.plan_bound(0.05, 8, datasets, reads)
    assert bound["requests"] == pages(datasets) + reads
    assert bound["wall_seconds"] == pytest.approx(0.05 * rounds)


def test_apply_bound_adds_writes_and_listing(bounds: ModuleType) -> None:
    bound = bounds.apply_bound(0.05, 8, 10_000, 1000)
    # Listing (1 + 13 rounds), reads (125), writes (125), listing again (14).
    assert bound["requests"] == 100 + 1000 + 1000 + 100
    assert bound["wall_seconds"] == pytest.approx(0.05 * (14 + 125 + 125 + 14))


def test_naive_bound_is_sequential(bounds: ModuleType) -> None:
    bound = bounds.naive_bound(0.05, 11_000)
    assert bound["wall_seconds"] == pytest.approx(550.0)
