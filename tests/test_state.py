from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from reconciler.errors import StateError
from reconciler.schemas import load_schema
from reconciler.state import (
    StateFile,
    default_state_path,
    remove_leftover_temporary_files,
    serialize,
)

DOMAIN = "portal.example.invalid"


def test_default_state_path_beside_single_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "city.yaml"
    manifest.write_text("version: 1\n")
    assert default_state_path([manifest]) == tmp_path / "city.state.json"


def test_default_state_path_in_manifest_folder(tmp_path: Path) -> None:
    assert default_state_path([tmp_path]) == tmp_path / "ods-reconciler.state.json"


def test_state_missing_file_is_created_on_save(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    data = json.loads(path.read_text())
    assert data["domain"] == DOMAIN
    assert data["runs"][0]["outcome"] == "running"
    assert data["runs"][0]["manifest_digest"] == "sha256:abc"


def test_state_records_intent_before_result(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    state.record_intent("da_a", "publish")
    pending = json.loads(path.read_text())["datasets"]["da_a"]
    assert pending["outcome"] == "pending"
    assert pending["job_id"] is None
    state.record_result("da_a", job_id="f" * 40)
    done = json.loads(path.read_text())["datasets"]["da_a"]
    assert done["outcome"] == "submitted"
    assert done["job_id"] == "f" * 40


def test_state_written_file_matches_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    state.record_intent("da_a", "publish")
    state.record_result("da_a", job_id="f" * 40)
    state.record_intent("da_b", "unpublish")
    state.record_result("da_b", job_id=None, error="HTTP 400: busy")
    state.record_observed("da_a", "queued", False)
    state.finish_run("partial")
    data = json.loads(path.read_text())
    jsonschema.validate(data, load_schema("state.schema.json"))
    assert data["runs"][0]["actions"] == 1
    assert data["runs"][0]["failures"] == 1
    assert data["datasets"]["da_b"]["outcome"] == "failed"


def test_state_keeps_backup_and_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    before = path.read_text()
    state.record_intent("da_a", "publish")
    assert (tmp_path / "s.state.json.bak").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s.state.json",
        "s.state.json.bak",
    ]


def test_state_reload_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    state.record_intent("da_a", "publish")
    state.record_result("da_a", job_id="a" * 40)
    assert StateFile.load(path, DOMAIN).datasets["da_a"]["job_id"] == "a" * 40


def test_state_other_domain_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    StateFile.load(path, DOMAIN).save()
    with pytest.raises(StateError) as caught:
        StateFile.load(path, "staging.example.invalid")
    assert str(caught.value) == (
        f"{path}: state file of domain '{DOMAIN}', not 'staging.example.invalid'; "
        "give another --state path for this domain"
    )


def test_state_invalid_structure_names_place(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    content = json.dumps(
        {"version": 1, "domain": DOMAIN, "runs": [], "datasets": {"da_a": 3}}
    )
    path.write_text(content)
    with pytest.raises(StateError) as caught:
        StateFile.load(path, DOMAIN)
    assert str(caught.value) == (
        f"{path}: $.datasets.da_a: 3 is not of type 'object'; "
        "the state file was left untouched"
    )
    assert path.read_text() == content


def test_state_cached_lines_match_fresh_encoding(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    state = StateFile.load(path, DOMAIN)
    state.begin_run("apply", "sha256:abc", dry_run=False)
    for uid in ("da_b", "da_a", "da_c"):
        state.record_intent(uid, "publish")
    state.record_result("da_a", job_id="a" * 40)
    state.record_observed("da_a", "queued", False)
    state.record_settled("da_c", "timed_out", "still running")
    state.save()
    assert path.read_text() == serialize(json.loads(path.read_text()))
    assert json.loads(path.read_text())["datasets"]["da_a"]["observed_after"] == {
        "at": state.datasets["da_a"]["observed_after"]["at"],
        "name": "queued",
        "published": False,
    }


def test_leftover_temporary_files_removed(tmp_path: Path) -> None:
    path = tmp_path / "s.state.json"
    leftover = tmp_path / ".s.state.json.abc123.tmp"
    leftover.write_text("{")
    other = tmp_path / ".other.json.abc123.tmp"
    other.write_text("{")
    remove_leftover_temporary_files(path)
    assert not leftover.exists()
    assert other.exists()
