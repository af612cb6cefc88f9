"""The `simulator` command: serve the Management API simulator until interrupted."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import cast

import click

from reconciler.errors import ConfigError
from reconciler.simulator import (
    DEFAULT_RIGHTS,
    Simulator,
    SimulatorConfig,
    generate_datasets,
    load_seed,
)


@click.command("simulator")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port to listen on at 127.0.0.1, or 0 for a free port.",
)
@click.option(
    "--seed-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML or JSON file listing the datasets to serve.",
)
@click.option(
    "--generate",
    type=click.IntRange(min=0),
    metavar="N",
    help="Serve N generated idle datasets instead of a seed file.",
)
@click.option(
    "--published-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Fraction of generated datasets that start published (0 to 1).",
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(min=0.0, min_open=True),
    default=0.2,
    show_default=True,
    help="Duration of each status phase (queued, processing, ...), in seconds.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Delay added to every API request, in seconds.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of API requests (0 to 1) that get a 503 response, without acting.",
)
@click.option(
    "--throttle-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of API requests (0 to 1) that get a 429 response, without acting.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Retry-After header value sent with 429 responses, in seconds.",
)
@click.option(
    "--drop-after-write-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of accepted publish, unpublish and abort requests (0 to 1) "
    "that act but close the connection without a response.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Maximum page size of the dataset listing, in datasets.",
)
@click.option(
    "--listing-status/--no-listing-status",
    default=True,
    show_default=True,
    help="Include each dataset's status in listing items.",
)
@click.option(
    "--bare-listing",
    is_flag=True,
    help="Return the listing as a bare JSON array instead of an object with nhits.",
)
@click.option(
    "--random-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for faults, job ids and --generate, so that runs repeat.",
)
def simulator_command(
    port: int,
    seed_file: Path | None,
    generate: int | None,
    published_fraction: float,
    step_seconds: float,
    latency: float,
    error_rate: float,
    throttle_rate: float,
    retry_after: int,
    drop_after_write_rate: float,
    max_rows: int,
    listing_status: bool,
    bare_listing: bool,
    random_seed: int,
) -> None:
    """Serve a local simulator of the Management API v2 on 127.0.0.1.

    It accepts the credentials in ODS_API_KEY, or ODS_USERNAME and ODS_PASSWORD,
    and serves until interrupted (Ctrl-C or SIGTERM).
    """
    if (seed_file is None) == (generate is None):
        raise click.UsageError("Pass exactly one of --seed-file PATH and --generate N.")
    if seed_file is not None:
        try:
            datasets = load_seed(seed_file)
        except ConfigError as error:
            raise click.ClickException(str(error)) from error
    else:
        datasets = generate_datasets(
            cast(int, generate), published_fraction, random_seed
        )

    api_keys, users = _credentials_from_environment()
    config = SimulatorConfig(
        api_keys=api_keys,
        users=users,
        step_seconds=step_seconds,
        latency=latency,
        error_rate=error_rate,
        throttle_rate=throttle_rate,
        retry_after=retry_after,
        drop_after_write_rate=drop_after_write_rate,
        max_rows=max_rows,
        listing_status=listing_status,
        bare_listing=bare_listing,
        seed=random_seed,
    )
    _serve(Simulator(datasets, config), port)


def _credentials_from_environment() -> tuple[
    dict[str, frozenset[str]], dict[str, tuple[str, frozenset[str]]]
]:
    """Read the credentials to accept from the variables the reconciler sends."""
    api_key = os.environ.get("ODS_API_KEY", "")
    username = os.environ.get("ODS_USERNAME", "")
    password = os.environ.get("ODS_PASSWORD", "")
    if bool(username) != bool(password):
        raise click.ClickException(
            "Set both ODS_USERNAME and ODS_PASSWORD, or neither and set ODS_API_KEY."
        )
    if not api_key and not username:
        raise click.ClickException(
            "No credentials to accept: set ODS_API_KEY to the API key the reconciler "
            "will send (or set ODS_USERNAME and ODS_PASSWORD)."
        )
    api_keys = {api_key: DEFAULT_RIGHTS} if api_key else {}
    users = {username: (password, DEFAULT_RIGHTS)} if username else {}
    return api_keys, users


def _serve(simulator: Simulator, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop the server cleanly."""
    try:
        simulator.start(port)
    except OSError as error:
        raise click.ClickException(
            f"Failed to listen on 127.0.0.1:{port}: {error}. Choose another --port, "
            "or 0 for a free one."
        ) from error
    click.echo(
        f"Simulator listening on {simulator.api_url} ({len(simulator)} datasets)"
    )

    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous_handler = signal.signal(signal.SIGTERM, request_stop)
    try:
        stop_requested.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        simulator.stop()
    click.echo("Simulator stopped.", err=True)
