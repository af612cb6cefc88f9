"""Validate a manifest and plan it against a portal state built in memory.

This is the work of `validate` and of the planning step of `plan`, without any
request: the manifest is loaded with load_manifests, the portal's state is the
one the simulator generates for the same arguments, and build_plan compares
them. It prints a JSON object to stdout with the wall and CPU seconds of each
step and the number of datasets and actions.

Usage: python offline_plan.py MANIFEST DATASETS PUBLISHED_FRACTION SEED
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from reconciler.manifest import load_manifests
from reconciler.observe import desired_datasets
from reconciler.plan import ObservedDataset, build_plan
from reconciler.simulator import generate_datasets

T = TypeVar("T")


def timed(step: Callable[[], T], figures: dict[str, float], name: str) -> T:
    """Run one step and store its wall and CPU seconds under its name."""
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    result = step()
    figures[f"{name}_wall_seconds"] = time.perf_counter() - wall_started
    figures[f"{name}_cpu_seconds"] = time.process_time() - cpu_started
    return result


def main() -> None:
    """Load, observe and plan, then print the figures as JSON."""
    manifest_path = Path(sys.argv[1])
    count, published_fraction, seed = (
        int(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
    )
    # CPU time spent so far: the interpreter's start and the imports.
    figures: dict[str, float] = {"startup_cpu_seconds": time.process_time()}

    manifest = timed(lambda: load_manifests([manifest_path]), figures, "load")
    portal = timed(
        lambda: generate_datasets(count, published_fraction, seed),
        figures,
        "generate",
    )

    def observe() -> dict[str, ObservedDataset]:
        return {
            dataset.uid: ObservedDataset(
                uid=dataset.uid,
                published=dataset.published,
                status=dataset.status,
                dataset_id=dataset.dataset_id,
            )
            for dataset in portal
        }

    def plan() -> int:
        desired = desired_datasets(manifest)
        the_plan = build_plan("127.0.0.1", manifest.digest, desired, observed)
        return len(the_plan.actions)

    observed = timed(observe, figures, "observe")
    actions = timed(plan, figures, "plan")
    print(
        json.dumps({"datasets": len(manifest.datasets), "actions": actions, **figures})
    )


if __name__ == "__main__":
    main()
