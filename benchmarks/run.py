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
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from reconciler.cli_options import DEFAULT_PARALLELISM
from reconciler.client import PAGE_SIZE
from reconciler.simulator import SimulatedDataset, generate_datasets

BENCHMARKS = Path(__file__).resolve().parent
MEASURE_CHILD = BENCHMARKS / "measure_child.py"
NAIVE_CLIENT = BENCHMARKS / "naive_client.py"
OFFLINE_PLAN = BENCHMARKS / "offline_plan.py"
DEFAULT_JSON = BENCHMARKS / "results" / "latest.json"

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
PLAN_SUMMARY = re.compile(r"(\d+) to publish, (\d+) to unpublish")

# Targets: plan wall time at the largest size and apply wall time, as multiples
# of their latency bound; offline CPU seconds and peak megabytes.
PLAN_WALL_TARGET = 1.5
APPLY_WALL_TARGET = 1.3
OFFLINE_CPU_TARGET = 3.0
OFFLINE_RSS_TARGET = 300.0


class BenchmarkError(Exception):
    """A measurement could not be made or measured something else."""


@dataclass(frozen=True)
class Settings:
    """What to measure and with what simulated latency."""

    latency: float
    sizes: tuple[int, ...]
    changes: int
    offline_size: int
    parallelism: int
    naive_limit: int
    json_path: Path


@dataclass(frozen=True)
class Finished:
    """A child process's exit code, output and resource use."""

    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float


def parse_settings(argv: Sequence[str]) -> Settings:
    """Read the command line; --quick picks small sizes and no latency."""
    parser = argparse.ArgumentParser(
        description="Benchmark ods-reconcile plan and apply against the simulator."
    )
    parser.add_argument("--latency", type=float, help="seconds added per request")
    parser.add_argument(
        "--sizes", help="managed datasets of each plan, comma-separated"
    )
    parser.add_argument("--changes", type=int, help="datasets that apply changes")
    parser.add_argument("--offline-size", type=int, help="datasets of offline plan")
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM)
    parser.add_argument(
        "--naive-limit",
        type=int,
        default=1000,
        help="datasets the naive client handles per run; beyond, its time is "
        "extrapolated",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, dest="json_path")
    parser.add_argument("--quick", action="store_true", help="a few seconds' run")
    arguments = parser.parse_args(argv)

    quick = arguments.quick
    sizes_text = arguments.sizes or ("30,250" if quick else "100,1000,10000")
    settings = Settings(
        latency=_pick(arguments.latency, 0.0 if quick else 0.05),
        sizes=tuple(int(size) for size in sizes_text.split(",")),
        changes=_pick(arguments.changes, 20 if quick else 1000),
        offline_size=_pick(arguments.offline_size, 2000 if quick else 100_000),
        parallelism=arguments.parallelism,
        naive_limit=arguments.naive_limit,
        json_path=arguments.json_path,
    )
    problem = settings_problem(settings)
    if problem:
        parser.error(problem)
    return settings


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


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


# --- Workload: the portal, the manifests and the child processes ----------------


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
    """Run a command to its end; measure its wall time, CPU time and peak RSS."""
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
        figures = json.loads(result_path.read_text(encoding="utf-8"))
        stdout.seek(0)
        stderr.seek(0)
        return Finished(
            returncode=figures["returncode"],
            stdout=stdout.read().decode(errors="replace"),
            stderr=stderr.read().decode(errors="replace"),
            wall_seconds=figures["wall_seconds"],
            cpu_seconds=figures["cpu_seconds"],
            peak_rss_mb=figures["peak_rss_bytes"] / 1e6,
        )


def checked(finished: Finished, what: str) -> Finished:
    """Return a finished child, or raise if it failed."""
    if finished.returncode != 0:
        raise BenchmarkError(
            f"{what} exited with {finished.returncode}: {finished.stderr[-2000:]}"
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


# --- Lower bounds set by latency -------------------------------------------------


def listing_pages(datasets: int) -> int:
    """Count the listing pages: one per 100 datasets, and at least one."""
    return max(1, math.ceil(datasets / PAGE_SIZE))


def listing_rounds(datasets: int, parallelism: int) -> int:
    """Count the round trips of a listing: page 1, then the others in parallel."""
    return 1 + math.ceil((listing_pages(datasets) - 1) / parallelism)


def plan_bound(settings: Settings, datasets: int, reads: int) -> dict[str, float]:
    """Return the fewest requests of a plan and the time their latency takes."""
    rounds = listing_rounds(datasets, settings.parallelism)
    rounds += math.ceil(reads / settings.parallelism)
    return {
        "requests": listing_pages(datasets) + reads,
        "wall_seconds": settings.latency * rounds,
    }


def apply_bound(settings: Settings, datasets: int, changes: int) -> dict[str, float]:
    """Return the same for apply: a plan, the writes, and a listing after them."""
    bound = plan_bound(settings, datasets, changes)
    writes = math.ceil(changes / settings.parallelism)
    rounds_after = writes + listing_rounds(datasets, settings.parallelism)
    return {
        "requests": bound["requests"] + changes + listing_pages(datasets),
        "wall_seconds": bound["wall_seconds"] + settings.latency * rounds_after,
    }


def naive_bound(settings: Settings, requests_sent: int) -> dict[str, float]:
    """Return the naive client's requests and time: one request after another."""
    return {
        "requests": requests_sent,
        "wall_seconds": settings.latency * requests_sent,
    }


# --- Measurements -----------------------------------------------------------------


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
        "bound": plan_bound(settings, datasets, reads=drift),
        "naive": naive,
        "naive_bound": naive_bound(settings, naive["requests"]),
    }


def measure_apply(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Apply a manifest of the largest size that changes `changes` datasets."""
    datasets = max(settings.sizes)
    portal = generate_datasets(datasets, PUBLISHED_FRACTION, RANDOM_SEED)
    manifest = write_manifest(workdir / "apply.yaml", portal, settings.changes)
    state = workdir / "apply.state.json"
    with simulator(datasets, settings.latency) as running:
        command = cli_command("apply", manifest, running, settings)
        # Half the changes are unpublishes: more than apply allows unless told.
        command += ["--state", str(state), "--allow-unpublish", str(settings.changes)]
        finished = checked(run_child(command), "apply")
        tally = running.requests_by_route()

    writes = sum(count for route, count in tally.items() if route.startswith("PUT"))
    if writes != settings.changes:
        raise BenchmarkError(f"apply sent {writes} actions, not {settings.changes}")
    naive = measure_naive(settings, manifest, datasets, changes=settings.changes)
    return {
        "datasets": datasets,
        "changes": settings.changes,
        "ours": child_figures(finished, tally),
        "bound": apply_bound(settings, datasets, settings.changes),
        "naive": naive,
        "naive_bound": naive_bound(settings, naive["requests"]),
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
        raise BenchmarkError(f"offline plan found {steps['actions']}, not {drift}")
    # Generating the portal's state stands in for reading it: not the tool's work.
    return {
        "datasets": datasets,
        "out_of_sync": drift,
        "wall_seconds": finished.wall_seconds - steps["generate_wall_seconds"],
        "cpu_seconds": finished.cpu_seconds - steps["generate_cpu_seconds"],
        "peak_rss_mb": finished.peak_rss_mb,
        "steps": steps,
    }


# --- Targets and report -----------------------------------------------------------


def ratio(value: float | None, reference: float | None) -> float | None:
    """Divide, or return None when either side is missing or the divisor is 0."""
    if value is None or not reference:
        return None
    return value / reference


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the figures with their targets; a target without a bound is skipped."""
    targets = [
        _target(
            f"plan requests, N={plan['datasets']}",
            plan["ours"]["requests"],
            plan["bound"]["requests"],
            "requests",
        )
        for plan in results["plan"]
    ]
    largest = max(results["plan"], key=lambda plan: plan["datasets"])
    apply = results["apply"]
    offline = results["offline"]
    targets += [
        _wall_target(
            f"plan wall / bound, N={largest['datasets']}", largest, PLAN_WALL_TARGET
        ),
        _wall_target(
            f"apply wall / bound, {apply['changes']} changes", apply, APPLY_WALL_TARGET
        ),
        _target("offline CPU seconds", offline["cpu_seconds"], OFFLINE_CPU_TARGET),
        _target("offline peak RSS MB", offline["peak_rss_mb"], OFFLINE_RSS_TARGET),
    ]
    return [target for target in targets if target["limit"] is not None]


def _wall_target(name: str, result: dict[str, Any], limit: float) -> dict[str, Any]:
    value = ratio(result["ours"]["wall_seconds"], result["bound"]["wall_seconds"])
    return _target(name, value, limit if value is not None else None)


def _target(
    name: str, value: float | None, limit: float | None, unit: str = ""
) -> dict[str, Any]:
    met = value is not None and limit is not None and value <= limit
    return {"name": name, "value": value, "limit": limit, "unit": unit, "met": met}


def format_number(value: float | None, unit: str = "") -> str:
    """Format a figure for the table: counts whole, the rest with 2 decimals."""
    if value is None:
        return "-"
    if unit == "requests":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def comparison_rows(label: str, result: dict[str, Any]) -> list[list[str]]:
    """Return the table rows of a plan or apply: requests, wall time, memory."""
    ours, naive = result["ours"], result["naive"]
    estimated = "~" if naive["extrapolated_from"] else ""
    rows = []
    for figure, key in (
        ("requests", "requests"),
        ("wall s", "wall_seconds"),
        ("peak RSS MB", "peak_rss_mb"),
    ):
        bound = result["bound"].get(key)
        naive_bound = result["naive_bound"].get(key)
        unit = key if key == "requests" else ""
        naive_text = format_number(naive[key], unit)
        if key != "peak_rss_mb":
            naive_text = estimated + naive_text
        rows.append(
            [
                f"{label} {figure}",
                format_number(ours[key], unit),
                format_number(bound, unit),
                format_number(ratio(ours[key], bound)),
                naive_text,
                format_number(naive_bound, unit),
                format_number(ratio(naive[key], ours[key])),
            ]
        )
    return rows


def render_report(results: dict[str, Any]) -> str:
    """Render the comparison table, the offline figures and the targets."""
    header = ["figure", "ours", "bound", "ours/bound", "naive", "naive bound"]
    rows = [[*header, "naive/ours"]]
    for plan in results["plan"]:
        rows += comparison_rows(f"plan N={plan['datasets']:,}", plan)
    apply = results["apply"]
    rows += comparison_rows(
        f"apply {apply['changes']:,} of N={apply['datasets']:,}", apply
    )
    offline = results["offline"]
    for figure, key in (
        ("wall s", "wall_seconds"),
        ("CPU s", "cpu_seconds"),
        ("peak RSS MB", "peak_rss_mb"),
    ):
        label = f"offline N={offline['datasets']:,} {figure}"
        rows.append([label, format_number(offline[key]), *["-"] * 5])

    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    estimated = [
        result
        for result in [*results["plan"], apply]
        if result["naive"]["extrapolated_from"]
    ]
    if estimated:
        handled = estimated[0]["naive"]["extrapolated_from"]
        lines.append(f"~ naive: measured on the first {handled:,} datasets, scaled")
    lines += ["", "Targets:"]
    for target in results["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"  {verdict:<6} {target['name']}: "
            f"{format_number(target['value'], target['unit'])} "
            f"(target <= {format_number(target['limit'], target['unit'])})"
        )
    return "\n".join(lines)


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
    print(
        f"{run['date']}, {run['cpus']} CPUs, latency {settings.latency} s, "
        f"parallelism {settings.parallelism}\n"
    )
    print(render_report(results))
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nResults written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
