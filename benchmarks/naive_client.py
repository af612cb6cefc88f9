"""Reconcile a manifest the way a hand-written script does, for comparison.

One GET of the status endpoint per dataset, then one PUT per dataset out of
sync, one request at a time. It reads the API key from ODS_API_KEY and prints
a JSON object to stdout: datasets handled, requests sent, actions sent and the
seconds spent in the request loop.

Usage: python naive_client.py MANIFEST BASE_URL [--limit N] [--read-only]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import requests
import yaml


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description="Reconcile a manifest with one request per dataset."
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("base_url", help="such as http://127.0.0.1:8765/api/...")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="Handle only the first N datasets of the manifest.",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="Send no PUT: only plan."
    )
    return parser.parse_args()


def reconcile(
    session: requests.Session,
    base_url: str,
    datasets: list[dict[str, Any]],
    read_only: bool,
) -> tuple[int, int]:
    """Read each dataset's status and send its action; return requests, actions."""
    requests_sent = actions_sent = 0
    for entry in datasets:
        uid = entry["uid"]
        response = session.get(f"{base_url}/datasets/{uid}/status", timeout=30)
        requests_sent += 1
        response.raise_for_status()
        wants_published = entry["state"] == "published"
        if response.json()["published"] == wants_published or read_only:
            continue
        action = "publish" if wants_published else "unpublish"
        response = session.put(f"{base_url}/datasets/{uid}/{action}", timeout=30)
        requests_sent += 1
        actions_sent += 1
        response.raise_for_status()
    return requests_sent, actions_sent


def main() -> None:
    """Load the manifest, reconcile it and print the figures as JSON."""
    arguments = parse_args()
    manifest = yaml.safe_load(arguments.manifest.read_text(encoding="utf-8"))
    datasets = manifest["datasets"][: arguments.limit]

    # A Session keeps the connection alive, which is kinder to this client
    # than the one-off requests.get calls that many scripts make.
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Apikey {os.environ['ODS_API_KEY']}"

    started = time.perf_counter()
    requests_sent, actions_sent = reconcile(
        session, arguments.base_url.rstrip("/"), datasets, arguments.read_only
    )
    loop_seconds = time.perf_counter() - started
    figures = {
        "datasets": len(datasets),
        "requests": requests_sent,
        "actions": actions_sent,
        "loop_seconds": loop_seconds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
