"""Benchmark plan and apply against the simulator, beside a naive client.

Each measurement starts its own simulator (`ods-reconcile simulator --generate N`)
in a separate process, runs the real CLI or the naive client in another, and
reads the requests sent from the simulator's tally. Peak memory is the child's
maximum resident set size, measured by measure_child.py as `time -v` does.
The results are printed as a table, with the lower bound that the simulated
latency sets, and written as JSON. docs/benchmarks.md explains every figure.

Usage: python benchmarks/run.py [--quick] [--latency S] [--sizes N,N,...] ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bounds import apply_bound, naive_bound, plan_bound
from harness import (
    DRIFT_FRACTION,
    PUBLISHED_FRACTION,
    RANDOM_SEED,
    BenchmarkError,
    Finished,
    RunningSimulator,
    checked,
    drift_count,
    run_child,
    simulator,
    write_manifest,
)
from report import check_targets, render_report

from reconciler.cli_options import DEFAULT_PARALLELISM
from reconciler.simulator import generate_datasets

BENCHMARKS = Path(__file__).resolve().parent
NAIVE_CLIENT = BENCHMARKS / "naive_client.py"
OFFLINE_PLAN = BENCHMARKS / "offline_plan.py"
DEFAULT_JSON = BENCHMARKS / "results" / "latest.json"
PLAN_SUMMARY = re.compile(r"(\d+) to publish, (\d+) to unpublish")

# Measurements of the full run, and of --quick, unless options override them.
FULL_DEFAULTS: dict[str, Any] = {
    "latency": 0.05,
    "sizes": (100, 1000, 10_000),
    "changes": 1000,
    "offline_size": 100_000,
}
QUICK_DEFAULTS: dict[str, Any] = {
    "latency": 0.0,
    "sizes": (30, 250),
    "changes": 20,
    "offline_size": 2000,
}


@dataclass(frozen=True)
class Settings:
    """Measurements to make, their sizes and the simulated latency."""

    latency: float
    sizes: tuple[int, ...]
    changes: int
    offline_size: int
    parallelism: int
    naive_limit: int
    json_path: Path


def parse_settings(argv: Sequence[str]) -> Settings:
    """Read the command line; --quick changes the defaults to a run of seconds."""
    parser = argparse.ArgumentParser(
        description="Benchmark ods-reconcile plan and apply against the simulator."
    )
    parser.add_argument(
        "--latency",
        type=float,
        help="seconds the simulator adds to each request (default 0.05; 0 quick)",
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        help="managed datasets of each plan, comma-separated "
        "(default 100,1000,10000; 30,250 quick)",
    )
    parser.add_argument(
        "--changes",
        type=int,
        help="datasets that apply changes, in a manifest of the largest size "
        "(default 1000; 20 quick)",
    )
    parser.add_argument(
        "--offline-size",
        type=int,
        help="datasets of the offline validate and plan (default 100000; 2000 quick)",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=DEFAULT_PARALLELISM,
        help="--parallelism of plan and apply (default %(default)s, as the CLI's)",
    )
    parser.add_argument(
        "--naive-limit",
        type=int,
        default=1000,
        help="datasets the naive client handles in one run; beyond that number, "
        "its wall time is extrapolated (default %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        dest="json_path",
        help="file to write the results to (default benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and no latency, for tests"
    )
    arguments = parser.parse_args(argv)

    defaults = QUICK_DEFAULTS if arguments.quick else FULL_DEFAULTS
    chosen = {
        name: default if getattr(arguments, name) is None else getattr(arguments, name)
        for name, default in defaults.items()
    }
    settings = Settings(
        **chosen,
        parallelism=arguments.parallelism,
        naive_limit=arguments.naive_limit,
        json_path=arguments.json_path,
    )
    problem = settings_problem(settings)
    if problem:
        parser.error(problem)
    return settings


def parse_sizes(text: str) -> tuple[int, ...]:
    """Read a comma-separated list of numbers of datasets."""
    try:
        return tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid sizes {text!r}: expected numbers such as 100,1000"
        ) from None


def settings_problem(settings: Settings) -> str | None:
    """Return what is wrong with the settings, or None."""
    if not settings.sizes or min(settings.sizes) < 1:
        return "--sizes must list positive numbers of datasets"
    if not 1 <= settings.changes <= max(settings.sizes):
        return "--changes must be between 1 and the largest of --sizes"
    if settings.latency < 0:
        return "--latency must not be negative"
    if min(settings.parallelism, settings.naive_limit, settings.offline_size) < 1:
        return "--parallelism, --naive-limit and --offline-size must be positive"
    return None


def cli_command(
    command: str, manifest: Path, running: RunningSimulator, settings: Settings
) -> list[str]:
    """Build the ods-reconcile command line of a plan or an apply."""
    return [
        *(sys.executable, "-m", "reconciler", command, str(manifest)),
        *("--domain", running.api_url, "--parallelism", str(settings.parallelism)),
    ]


def child_figures(finished: Finished, tally: dict[str, int]) -> dict[str, Any]:
    """Return the figures of one measured child and the requests it sent."""
    return {
        "requests": sum(tally.values()),
        "requests_by_route": tally,
        "wall_seconds": finished.wall_seconds,
        "cpu_seconds": finished.cpu_seconds,
        "peak_rss_mb": finished.peak_rss_mb,
    }


def measure_plan(settings: Settings, datasets: int, workdir: Path) -> dict[str, Any]:
    """Plan a manifest with 2% drift with the CLI, then with the naive client."""
    portal = generate_datasets(datasets, PUBLISHED_FRACTION, RANDOM_SEED)
    drift = drift_count(datasets)
    manifest = write_manifest(workdir / f"plan-{datasets}.yaml", portal, drift)
    with simulator(datasets, settings.latency) as running:
        command = cli_command("plan", manifest, running, settings)
        finished = checked(run_child(command), f"plan of {datasets} datasets")
        tally = running.requests_by_route()

    summary = PLAN_SUMMARY.search(finished.stdout)
    planned = int(summary[1]) + int(summary[2]) if summary else None
    if planned != drift:
        raise BenchmarkError(f"plan found {planned} actions, expected {drift}")
    naive = measure_naive(settings, manifest, datasets, changes=0)
    return {
        "datasets": datasets,
        "out_of_sync": drift,
        "ours": child_figures(finished, tally),
        "bound": plan_bound(
            settings.latency, settings.parallelism, datasets, reads=drift
        ),
        "naive": naive,
        "naive_bound": naive_bound(settings.latency, naive["requests"]),
    }


def measure_apply(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Apply a manifest of the largest size that changes `changes` datasets."""
    datasets = max(settings.sizes)
    portal = generate_datasets(datasets, PUBLISHED_FRACTION, RANDOM_SEED)
    manifest = write_manifest(workdir / "apply.yaml", portal, settings.changes)
    state = workdir / "apply.state.json"
    with simulator(datasets, settings.latency) as running:
        command = cli_command("apply", manifest, running, settings)
        # Half the changes are unpublishes, more than apply allows by default.
        command += ["--state", str(state), "--allow-unpublish", str(settings.changes)]
        finished = checked(run_child(command), "apply")
        tally = running.requests_by_route()

    writes = sum(count for route, count in tally.items() if route.startswith("PUT"))
    if writes != settings.changes:
        raise BenchmarkError(
            f"apply sent {writes} actions, expected {settings.changes}"
        )
    naive = measure_naive(settings, manifest, datasets, changes=settings.changes)
    return {
        "datasets": datasets,
        "changes": settings.changes,
        "ours": child_figures(finished, tally),
        "bound": apply_bound(
            settings.latency, settings.parallelism, datasets, settings.changes
        ),
        "naive": naive,
        "naive_bound": naive_bound(settings.latency, naive["requests"]),
    }


def measure_naive(
    settings: Settings, manifest: Path, datasets: int, changes: int
) -> dict[str, Any]:
    """Run the naive client on a fresh simulator; it sends the changes, if any.

    Beyond --naive-limit datasets, it handles only the first ones, and its wall
    time is extrapolated from its request loop: the time of the rest of the
    process is kept, the loop's is scaled to every dataset.
    """
    handled = min(datasets, settings.naive_limit)
    with simulator(datasets, settings.latency) as running:
        command = [sys.executable, str(NAIVE_CLIENT), str(manifest), running.api_url]
        command += ["--limit", str(handled)] + ([] if changes else ["--read-only"])
        finished = checked(run_child(command), "the naive client")
        tally = running.requests_by_route()

    reported = json.loads(finished.stdout)
    figures = child_figures(finished, tally)
    if figures["requests"] != reported["requests"]:
        raise BenchmarkError(
            f"the naive client counted {reported['requests']} requests, "
            f"the simulator {figures['requests']}"
        )
    figures["extrapolated_from"] = None
    if handled < datasets:
        loop_seconds = reported["loop_seconds"]
        figures["wall_seconds"] += loop_seconds * (datasets / handled - 1)
        figures["cpu_seconds"] = None
        figures["requests_measured"] = figures["requests"]
        figures["requests"] = datasets + changes
        figures["extrapolated_from"] = handled
    return figures


def measure_offline(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Validate and plan a large manifest without requests, in a child process."""
    datasets = settings.offline_size
    portal = generate_datasets(datasets, PUBLISHED_FRACTION, RANDOM_SEED)
    drift = drift_count(datasets)
    manifest = write_manifest(workdir / "offline.yaml", portal, drift)
    command = [sys.executable, str(OFFLINE_PLAN), str(manifest), str(datasets)]
    command += [repr(PUBLISHED_FRACTION), str(RANDOM_SEED)]
    finished = checked(run_child(command), "the offline plan")

    steps = json.loads(finished.stdout)
    if steps["actions"] != drift:
        raise BenchmarkError(
            f"offline plan found {steps['actions']} actions, expected {drift}"
        )
    # Generating the portal's state replaces reading it, so it is not counted.
    return {
        "datasets": datasets,
        "out_of_sync": drift,
        "wall_seconds": finished.wall_seconds - steps["generate_wall_seconds"],
        # The portal state is the input of the planning step: generating it and
        # turning it into observations is the benchmark's work, not the tool's.
        "cpu_seconds": finished.cpu_seconds
        - steps["generate_cpu_seconds"]
        - steps["observe_cpu_seconds"],
        "peak_rss_mb": finished.peak_rss_mb,
        "steps": steps,
    }


def run_benchmarks(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Make every measurement, one after the other, and check the targets."""
    plans = []
    for datasets in settings.sizes:
        progress(f"plan of {datasets:,} datasets, then the naive client")
        plans.append(measure_plan(settings, datasets, workdir))
    progress(f"apply of {settings.changes:,} changes, then the naive client")
    apply = measure_apply(settings, workdir)
    progress(f"offline validate and plan of {settings.offline_size:,} datasets")
    offline = measure_offline(settings, workdir)
    results: dict[str, Any] = {"plan": plans, "apply": apply, "offline": offline}
    results["targets"] = check_targets(results)
    return results


def progress(message: str) -> None:
    """Tell the person waiting what is being measured."""
    print(f"Measuring {message}...", file=sys.stderr, flush=True)


def describe_run(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """Record when, where and how the benchmark ran."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "command": " ".join(["python", "benchmarks/run.py", *argv]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other processes on the machine slow the measurements down.
        "load_average": os.getloadavg(),
        "settings": {
            "latency_seconds": settings.latency,
            "sizes": list(settings.sizes),
            "changes": settings.changes,
            "offline_size": settings.offline_size,
            "parallelism": settings.parallelism,
            "naive_limit": settings.naive_limit,
            "drift_fraction": DRIFT_FRACTION,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = parse_settings(argv)
    run = describe_run(settings, argv)
    try:
        with tempfile.TemporaryDirectory(prefix="ods-benchmark-") as workdir:
            results = run_benchmarks(settings, Path(workdir))
    except BenchmarkError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1

    results = {**run, **results}
    load = ", ".join(f"{value:.1f}" for value in run["load_average"])
    print(
        f"{run['date']}, {run['cpus']} CPUs, load average {load}, "
        f"latency {settings.latency} s, parallelism {settings.parallelism}\n"
    )
    print(render_report(results))
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nResults written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
