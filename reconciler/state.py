"""The state file: runs made and, per dataset, the last action and its job id.

The file is rewritten atomically after every change, so a run killed at any
point leaves either the previous version or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema

from reconciler.errors import StateError
from reconciler.manifest import Manifest
from reconciler.schemas import load_schema

STATE_VERSION = 1
MAX_RUNS = 100

# Outcomes of one action on one dataset.
PENDING = (
    "pending"  # the request is about to be sent, or was sent with no response recorded
)
SUBMITTED = "submitted"
FAILED = "failed"
UNKNOWN = "unknown"  # the request failed after it was sent and no status was read


def utc_now() -> str:
    """Return the current time as an ISO 8601 UTC timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def empty_state(domain: str) -> dict[str, Any]:
    """Return the content of a new state file for a portal."""
    return {"version": STATE_VERSION, "domain": domain, "runs": [], "datasets": {}}


def default_state_path(manifest_paths: list[Path]) -> Path:
    """Place the state file beside the manifest: name.state.json for one file."""
    first = manifest_paths[0]
    if len(manifest_paths) == 1 and first.is_file():
        return first.with_name(first.stem + ".state.json")
    folder = first if first.is_dir() else first.parent
    return folder / "ods-reconciler.state.json"


@dataclass(frozen=True)
class History:
    """The protections and actions under way that the state file gives the planner."""

    protected: frozenset[str] = frozenset()
    # The action last submitted per dataset, for the jobs not seen to finish.
    last_actions: dict[str, str] = field(default_factory=dict)


class StateFile:
    """The state of one portal's reconciliation, saved after each change."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self._lock = threading.Lock()
        # Saves are serialised by _write_lock; _changes counts the changes made
        # and _saved how many of them are on disk, so that threads that queue
        # for the write lock find their change already written by a later save.
        self._write_lock = threading.Lock()
        self._changes = 0
        self._saved = 0
        # Encoded line of each dataset record, dropped when the record changes.
        self._lines: dict[str, str] = {}
        self._run: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path, domain: str) -> StateFile:
        """Read the state file, or start a new one if it does not exist."""
        if not path.exists():
            return cls(path, empty_state(domain))
        data = _read(path)
        if data.get("domain") != domain:
            raise StateError(
                f"{path}: state file of domain {data.get('domain')!r}, not {domain!r}; "
                "give another --state path for this domain"
            )
        return cls(path, data)

    @property
    def protected(self) -> set[str]:
        """Return the uids that must never be unpublished."""
        return set(self.data.get("protected", []))

    def known(self, manifest: Manifest) -> History:
        """Return the protections in force and the actions still under way.

        A dataset is protected if the manifest sets `protect: true` or the state
        file remembers it, unless the manifest sets `protect: false`.
        """
        protected = self.protected
        for entry in manifest.datasets:
            if entry.protect is True:
                protected.add(entry.uid)
            elif entry.protect is False:
                protected.discard(entry.uid)
        last_actions = {
            uid: record["action"]
            for uid, record in self.datasets.items()
            if record.get("outcome") in (PENDING, SUBMITTED)
            and not record.get("settled")
        }
        return History(frozenset(protected), last_actions)

    def change_protections(self, protect: list[str], unprotect: list[str]) -> None:
        """Add and lift protections, as a saved plan's manifest sets them."""
        protected = (self.protected | set(protect)) - set(unprotect)
        with self._lock:
            self.data["protected"] = sorted(protected)

    def remember_protections(self, manifest: Manifest) -> None:
        """Store the protections in force so that removing an entry keeps them."""
        protected = sorted(self.known(manifest).protected)
        with self._lock:
            self.data["protected"] = protected

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        """Return the per-dataset records, keyed by uid."""
        records: dict[str, dict[str, Any]] = self.data["datasets"]
        return records

    def begin_run(self, command: str, manifest_digest: str, dry_run: bool) -> None:
        """Record the start of a run and save."""
        with self._lock:
            self._run = {
                "started_at": utc_now(),
                "finished_at": None,
                "command": command,
                "dry_run": dry_run,
                "manifest_digest": manifest_digest,
                "domain": self.data["domain"],
                "outcome": "running",
                "actions": 0,
                "failures": 0,
            }
            runs: list[dict[str, Any]] = self.data["runs"]
            for run in runs:
                # A run still "running" when the next one starts was killed.
                if run.get("outcome") == "running":
                    run["outcome"] = "interrupted"
            runs.append(self._run)
            del runs[:-MAX_RUNS]
        self.save()

    def record_intent(
        self, uid: str, action: str, *, plan_id: str | None = None
    ) -> None:
        """Record that a request is about to be sent, before it is, and save."""
        with self._lock:
            self._lines.pop(uid, None)
            self.datasets[uid] = {
                "action": action,
                "plan_id": plan_id,
                "job_id": None,
                "requested_at": utc_now(),
                "outcome": PENDING,
                "error": None,
                "observed_after": None,
            }
        self.save()

    def record_result(
        self,
        uid: str,
        *,
        job_id: str | None,
        error: str | None = None,
        outcome: str | None = None,
    ) -> None:
        """Record the response to a request (its job id, or why it failed) and save.

        The outcome is submitted, or failed when an error is given, unless set.
        """
        outcome = outcome or (FAILED if error else SUBMITTED)
        with self._lock:
            record = self.datasets[uid]
            self._lines.pop(uid, None)
            record["job_id"] = job_id
            record["outcome"] = outcome
            record["error"] = error
            if self._run is not None:
                self._run["actions" if outcome == SUBMITTED else "failures"] += 1
        self.save()

    def record_settled(self, uid: str, outcome: str, detail: str | None) -> None:
        """Record how a job ended (settled, failed or timed out); saved later."""
        with self._lock:
            record = self.datasets.get(uid)
            self._lines.pop(uid, None)
            if record is not None:
                record["settled"] = {
                    "outcome": outcome,
                    "detail": detail,
                    "at": utc_now(),
                }

    def record_observed(self, uid: str, status: str, published: bool) -> None:
        """Record the status read after an action; saved with the next save."""
        with self._lock:
            record = self.datasets.get(uid)
            self._lines.pop(uid, None)
            if record is not None:
                record["observed_after"] = {
                    "name": status,
                    "published": published,
                    "at": utc_now(),
                }

    def finish_run(self, outcome: str) -> None:
        """Record the end of the run and its outcome, and save."""
        with self._lock:
            if self._run is not None:
                self._run["finished_at"] = utc_now()
                self._run["outcome"] = outcome
        self.save()

    def save(self) -> None:
        """Write every change made so far, atomically; rename over the old file.

        Concurrent callers share writes: a call returns once a write that
        includes the changes made before it has completed.
        """
        with self._lock:
            self._changes += 1
            wanted = self._changes
        with self._write_lock:
            if self._saved >= wanted:
                return
            with self._lock:
                covered = self._changes
                text = serialize(self.data, self._lines)
            try:
                write_atomic(self.path, text, backup=True)
            except OSError as error:
                raise StateError(
                    f"cannot write the state file {self.path}: {error.strerror}"
                ) from None
            self._saved = covered


def serialize(data: dict[str, Any], lines: dict[str, str] | None = None) -> str:
    """Write the state as JSON with one run or dataset a line.

    One record a line keeps diffs of a committed state file readable. `lines`
    caches the line of each dataset record, so that a save re-encodes only the
    records changed since the last one. The caller removes a changed record's
    line.
    """
    lines = {} if lines is None else lines
    fields = []
    for key, value in data.items():
        if key == "datasets":
            inner = ",\n".join(
                _dataset_line(value, uid, lines) for uid in sorted(value)
            )
        elif isinstance(value, list):
            inner = ",\n".join(json.dumps(item, sort_keys=True) for item in value)
        else:
            fields.append(f"{json.dumps(key)}: {json.dumps(value)}")
            continue
        opening, closing = ("{", "}") if key == "datasets" else ("[", "]")
        body = f"\n{inner}\n" if inner else ""
        fields.append(f"{json.dumps(key)}: {opening}{body}{closing}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def _dataset_line(records: dict[str, Any], uid: str, lines: dict[str, str]) -> str:
    line = lines.get(uid)
    if line is None:
        line = f"{json.dumps(uid)}: {json.dumps(records[uid], sort_keys=True)}"
        lines[uid] = line
    return line


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise StateError(f"{path}: cannot read the state file: {error}") from None
    except json.JSONDecodeError as error:
        raise StateError(
            f"{path}:{error.lineno}:{error.colno}: the state file is not valid JSON "
            f"({error.msg}); it was left untouched: restore it from the .bak copy "
            "or version control, or move it away to start afresh"
        ) from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise StateError(
            f"{path}: unknown state file version {version!r}, expected "
            f"{STATE_VERSION}; it was left untouched"
        )
    validator = jsonschema.Draft202012Validator(load_schema("state.schema.json"))
    problem = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if problem is not None:
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path
        )
        raise StateError(
            f"{path}: {where}: {problem.message}; the state file was left untouched"
        )
    return data


def _new_file_mode() -> int:
    """Return 0o666 less the process umask, the mode open() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, text: str, *, backup: bool = False) -> None:
    """Replace a file's content at once: a flushed temporary file, renamed.

    The folder must exist: creating it would hide a mistyped path.
    """
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only; keep the mode
        # of the file replaced, or give a new one the usual mode.
        os.chmod(
            temporary,
            path.stat().st_mode & 0o777 if path.exists() else _new_file_mode(),
        )
        if backup:
            _keep_backup(path)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_leftover_temporary_files(path: Path) -> None:
    """Remove the temporary files of writes that a killed run left behind.

    Call it only while holding the state file's lock: another run's write in
    progress uses such a file.
    """
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _keep_backup(path: Path) -> None:
    """Keep the current version as path.bak, by a hard link where possible."""
    if not path.exists():
        return
    backup = path.with_name(path.name + ".bak")
    staging = path.with_name(f".{path.name}.bak.tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(path, staging)
    except OSError:
        shutil.copy2(path, staging)
    os.replace(staging, backup)
