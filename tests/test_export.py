"""Export a portal's state as a manifest, against simulators on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from reconciler import __version__, export
from reconciler.cli import cli
from reconciler.client import Client, Credentials
from reconciler.errors import ApiError, ConfigError
from reconciler.export import export_command, export_manifest, quote
from reconciler.manifest import load_manifests
from reconciler.simulator import SimulatedDataset, Simulator
from tests.conftest import API_KEY

StartSimulator = Callable[..., Simulator]
RunCli = Callable[..., Result]

EXPORTED_AT = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
PORTAL = [
    SimulatedDataset("da_pub001", "roads", published=True),
    SimulatedDataset("da_unp002", "old-budget", published=False),
    SimulatedDataset(
        "da_bsy003", "census", published=False, status="processing", busy_seconds=60
    ),
    SimulatedDataset("da_num004", "100001", published=True),
    SimulatedDataset("da_off005", "off", published=False),
    SimulatedDataset(
        "da_err006", "ev-charging", True, status="error", message="Source\nunreachable"
    ),
    SimulatedDataset("da_Bad007", "bad-uid", published=True),
]
ENTRIES = [
    ("da_bsy003", "census", "unpublished"),
    ("da_err006", "ev-charging", "published"),
    ("da_num004", "100001", "published"),
    ("da_off005", "off", "unpublished"),
    ("da_pub001", "roads", "published"),
    ("da_unp002", "old-budget", "unpublished"),
]


def header(domain: str) -> str:
    return (
        f"# Exported from {domain} at 2026-12-01T09:30:00Z "
        f"by ods-reconcile export {__version__}.\n"
        "# Each state is the dataset's published flag at that time. Review the\n"
        "# file and remove the datasets this repository must not manage.\n"
        "version: 1\n"
        f'domain: "{domain}"\n'
    )


def expected_manifest(simulator: Simulator) -> str:
    busy_since = simulator.snapshot("da_bsy003")["since"]
    error_since = simulator.snapshot("da_err006")["since"]
    return header(simulator.url) + (
        "datasets:\n"
        "  # not exported: the dataset_uid is not da_ followed by lower-case "
        "letters or digits, as the manifest requires\n"
        "  # da_Bad007 (bad-uid)\n"
        f"  # busy (processing) since {busy_since}: heads to published, exported "
        "as unpublished, the state at export time\n"
        "  - uid: da_bsy003\n"
        '    id: "census"\n'
        "    state: unpublished\n"
        f"  # last run ended in error since {error_since}: Source unreachable\n"
        "  - uid: da_err006\n"
        '    id: "ev-charging"\n'
        "    state: published\n"
        "  - uid: da_num004\n"
        '    id: "100001"\n'
        "    state: published\n"
        "  - uid: da_off005\n"
        '    id: "off"\n'
        "    state: unpublished\n"
        "  - uid: da_pub001\n"
        '    id: "roads"\n'
        "    state: published\n"
        "  - uid: da_unp002\n"
        '    id: "old-budget"\n'
        "    state: unpublished\n"
    )


def client_for(simulator: Simulator, client_class: type[Client] = Client) -> Client:
    return client_class(simulator.api_url, Credentials(api_key=API_KEY))


def export_at_fixed_time(
    simulator: Simulator, client_class: type[Client] = Client
) -> str:
    client = client_for(simulator, client_class)
    return export_manifest(client, simulator.url, exported_at=EXPORTED_AT)


def invoke_export(*args: str, env: dict[str, str | None] | None = None) -> Result:
    environment: dict[str, str | None] = {"ODS_API_KEY": API_KEY, "ODS_DOMAIN": None}
    environment.update(env or {})
    return CliRunner().invoke(export_command, list(args), env=environment)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "utc_now", lambda: EXPORTED_AT)


class UnflaggedClient(Client):
    """A client whose listing items lack metas, which the API does not guarantee."""

    def list_datasets(self) -> Iterator[dict[str, Any]]:
        for item in super().list_datasets():
            yield {key: value for key, value in item.items() if key != "metas"}


class FailingStatusClient(Client):
    """A client whose status reads of da_pub001 fail, as when every retry failed."""

    def get_status(self, uid: str, *, expand_user: bool = False) -> dict[str, Any]:
        if uid == "da_pub001":
            raise ApiError("GET /datasets/da_pub001/status: HTTP 503: unavailable")
        return super().get_status(uid, expand_user=expand_user)


def test_export_manifest_text(start_simulator: StartSimulator) -> None:
    simulator = start_simulator(PORTAL)
    text = export_at_fixed_time(simulator)
    assert text == expected_manifest(simulator)
    assert simulator.stats()["requests"] == {
        "GET /datasets": 1,
        "GET /datasets/{uid}/status": 1,
    }


def test_export_output_loads_as_manifest(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    path = tmp_path / "exported.yaml"
    path.write_text(export_manifest(client_for(simulator), simulator.url))
    manifest = load_manifests([path])
    entries = [(d.uid, d.dataset_id, d.state) for d in manifest.datasets]
    assert manifest.domain == simulator.url
    assert entries == ENTRIES


def test_export_then_plan_has_no_changes(
    tmp_path: Path, start_simulator: StartSimulator, run_cli: RunCli
) -> None:
    simulator = start_simulator(PORTAL)
    path = tmp_path / "exported.yaml"
    exported = invoke_export("--domain", simulator.url, "--out", str(path))
    assert exported.exit_code == 0, exported.output

    result = run_cli("plan", "--detailed-exitcode", str(path))
    host = simulator.url.removeprefix("http://")
    busy_since = simulator.snapshot("da_bsy003")["since"]
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Plan for {host}: 6 datasets in the manifest\n"
        "\n"
        f"~ busy        da_bsy003 (census): processing since {busy_since}; heads to "
        "published, not unpublished: plan again once it settles\n"
        "! unhealthy   da_err006 (ev-charging): published, but last run ended in "
        "error: Source unreachable\n"
        "\n"
        "0 to publish, 0 to unpublish, 4 unchanged, 1 unhealthy, 1 busy\n"
    )


def test_export_without_listing_status_reads_statuses(
    start_simulator: StartSimulator,
) -> None:
    simulator = start_simulator(PORTAL, listing_status=False)
    text = export_at_fixed_time(simulator)
    assert text == expected_manifest(simulator)
    assert simulator.stats()["requests"] == {
        "GET /datasets": 1,
        "GET /datasets/{uid}/status": 6,
    }


def test_export_without_published_flag_reads_statuses(
    start_simulator: StartSimulator,
) -> None:
    simulator = start_simulator(PORTAL)
    text = export_at_fixed_time(simulator, UnflaggedClient)
    assert text == expected_manifest(simulator)
    assert simulator.stats()["requests"] == {
        "GET /datasets": 1,
        "GET /datasets/{uid}/status": 6,
    }


def test_export_unreadable_status_uses_listed_flag(
    start_simulator: StartSimulator,
) -> None:
    simulator = start_simulator(PORTAL[:1], listing_status=False)
    text = export_at_fixed_time(simulator, FailingStatusClient)
    assert text == header(simulator.url) + (
        "datasets:\n"
        "  # status unreadable, state from the listing: "
        "GET /datasets/da_pub001/status: HTTP 503: unavailable\n"
        "  - uid: da_pub001\n"
        '    id: "roads"\n'
        "    state: published\n"
    )


def test_export_unreadable_without_flag_is_comment(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL[:2])

    class UnflaggedFailingClient(UnflaggedClient, FailingStatusClient):
        pass

    text = export_at_fixed_time(simulator, UnflaggedFailingClient)
    assert text == header(simulator.url) + (
        "datasets:\n"
        "  # not exported: GET /datasets/da_pub001/status: HTTP 503: unavailable\n"
        "  # da_pub001 (roads)\n"
        "  - uid: da_unp002\n"
        '    id: "old-budget"\n'
        "    state: unpublished\n"
    )
    path = tmp_path / "exported.yaml"
    path.write_text(text)
    assert [d.uid for d in load_manifests([path]).datasets] == ["da_unp002"]


def test_export_empty_portal(tmp_path: Path, start_simulator: StartSimulator) -> None:
    simulator = start_simulator([])
    text = export_at_fixed_time(simulator)
    assert text == header(simulator.url) + "datasets: []\n"
    path = tmp_path / "exported.yaml"
    path.write_text(text)
    assert load_manifests([path]).datasets == ()


def test_export_reads_listing_in_pages_of_100(start_simulator: StartSimulator) -> None:
    portal = [SimulatedDataset(f"da_{i:04d}", f"d{i}", True) for i in range(250)]
    simulator = start_simulator(portal)
    text = export_manifest(client_for(simulator), simulator.url)
    assert text.count("\n  - uid: ") == 250
    assert simulator.stats()["requests"] == {"GET /datasets": 3}


def test_export_rejects_domain_manifest_cannot_hold() -> None:
    client = Client("http://127.0.0.1:9/api/management/v2", Credentials(api_key="k"))
    with pytest.raises(ConfigError) as raised:
        export_manifest(client, "127.0.0.1:9")
    assert str(raised.value) == (
        "invalid domain '127.0.0.1:9' for a manifest: expected a host name such as "
        "data.example.org or a base URL such as https://data.example.org:8443"
    )


@pytest.mark.parametrize(
    "text",
    [
        *("off", "yes", "No", "~", "null", "0123", "1.10", "100001", "1e3", "0o17"),
        *("2025-01-01", "a: b", "# x", "it's", 'say "hi"', "données", "tab\there"),
    ],
)
def test_quote_keeps_text_a_string(text: str) -> None:
    assert yaml.safe_load(f"value: {quote(text)}\n") == {"value": text}


def test_export_command_writes_out_file(
    tmp_path: Path, start_simulator: StartSimulator, fixed_clock: None
) -> None:
    simulator = start_simulator(PORTAL)
    path = tmp_path / "exported.yaml"
    path.write_text("old content\n")
    result = invoke_export("--domain", simulator.url, "--out", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Exported 6 datasets from {simulator.url} to {path}\n"
    assert result.stderr == ""
    assert path.read_text() == expected_manifest(simulator)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.yaml"]


def test_export_command_prints_to_stdout(
    start_simulator: StartSimulator, fixed_clock: None
) -> None:
    simulator = start_simulator(PORTAL)
    result = invoke_export(env={"ODS_DOMAIN": simulator.url})
    assert result.exit_code == 0, result.output
    assert result.stdout == expected_manifest(simulator)


def test_export_command_requires_domain() -> None:
    result = invoke_export()
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "no domain: pass --domain or set ODS_DOMAIN"
    assert result.stdout == ""


def test_export_command_keeps_out_file_on_error(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    path = tmp_path / "exported.yaml"
    path.write_text("old content\n")
    args = ("--domain", simulator.url, "--out", str(path))
    result = invoke_export(*args, env={"ODS_API_KEY": "wrong-key-0123456789"})
    host = simulator.url.removeprefix("http://")
    assert isinstance(result.exception, ApiError)
    assert str(result.exception) == (
        "GET /datasets: HTTP 401: Invalid credentials: the API key or the username "
        "and password were not accepted; "
        f"the API key in ODS_API_KEY was rejected by {host}"
    )
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.yaml"]


def test_export_command_out_folder_missing(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    path = tmp_path / "missing" / "exported.yaml"
    result = invoke_export("--domain", simulator.url, "--out", str(path))
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (
        f"failed to write {path}: No such file or directory; choose another --out path"
    )
    assert list(tmp_path.iterdir()) == []


# Runs once the export command is registered in the command group.
@pytest.mark.skipif("export" not in cli.commands, reason="export not registered yet")
def test_export_through_cli_reports_error(run_cli: RunCli) -> None:
    result = run_cli("export")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: no domain: pass --domain or set ODS_DOMAIN\n"
