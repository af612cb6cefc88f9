from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.cli_options import EXIT_LOCKED
from reconciler.errors import StateError
from reconciler.lock import (
    StateLock,
    StateLockedError,
    force_unlock,
    force_unlock_command,
)

HOST = socket.gethostname()
STARTED_AT = "2026-12-04T10:00:00+00:00"
OTHER_HOST = "build-agent-7.example.invalid"


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "m.state.json"


@pytest.fixture
def lock_path(state_path: Path) -> Path:
    return state_path.with_name("m.state.json.lock")


@pytest.fixture
def fast_rereads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reread an invalid lock file without waiting, to keep the tests fast."""
    monkeypatch.setattr("reconciler.lock.READ_INTERVAL_SECONDS", 0.0)


@pytest.fixture
def sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    """Start a child process that sleeps; kill it after the test."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield child
    child.kill()
    child.wait()


@pytest.fixture
def dead_pid(sleeping_child: subprocess.Popen[bytes]) -> int:
    """Return the pid of a child process that was killed and reaped."""
    sleeping_child.kill()
    sleeping_child.wait()
    return sleeping_child.pid


def write_lock(
    lock_path: Path, pid: int, host: str = HOST, command: str = "apply"
) -> dict[str, Any]:
    holder = {"pid": pid, "host": host, "started_at": STARTED_AT, "command": command}
    lock_path.write_text(json.dumps(holder) + "\n")
    return holder


def acquire_error(state_path: Path) -> StateLockedError:
    with pytest.raises(StateLockedError) as caught, StateLock(state_path, "apply"):
        pass
    return caught.value


def test_state_lock_writes_holder_and_removes_file(
    state_path: Path, lock_path: Path
) -> None:
    before = datetime.now().astimezone()
    with StateLock(state_path, "apply") as lock:
        holder = json.loads(lock_path.read_text())
        assert lock.path == lock_path
        assert lock.holder == holder
        assert sorted(holder) == ["command", "host", "pid", "started_at"]
        assert holder["pid"] == os.getpid()
        assert holder["host"] == HOST
        assert holder["command"] == "apply"
        started_at = datetime.fromisoformat(holder["started_at"])
        assert started_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= started_at
    assert not lock_path.exists()
    assert lock.holder is None


def test_state_lock_missing_folder_is_an_error(tmp_path: Path) -> None:
    state_path = tmp_path / "new" / "m.state.json"
    with pytest.raises(StateError) as caught:
        StateLock(state_path, "apply").acquire()
    assert str(caught.value) == (
        f"failed to create the lock file {state_path}.lock: No such file or "
        f"directory; check that {tmp_path / 'new'} exists and is writable"
    )
    assert not (tmp_path / "new").exists()


def test_state_lock_acquire_again_after_release(
    state_path: Path, lock_path: Path
) -> None:
    lock = StateLock(state_path, "apply")
    with lock:
        pass
    with lock:
        assert lock_path.exists()
    assert not lock_path.exists()


def test_state_lock_removed_after_exception(state_path: Path, lock_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="inside the block"),
        StateLock(state_path, "apply"),
    ):
        assert lock_path.exists()
        raise ValueError("inside the block")
    assert not lock_path.exists()


def test_state_lock_second_acquire_raises(state_path: Path, lock_path: Path) -> None:
    with StateLock(state_path, "apply") as first:
        assert first.holder is not None
        error = acquire_error(state_path)
        started_at = first.holder["started_at"]
        assert str(error) == (
            f"{lock_path} is held by pid {os.getpid()} on host {HOST} since "
            f"{started_at} (apply); wait for that run to finish"
        )
        assert error.holder == first.holder
        assert error.stale is False
        assert json.loads(lock_path.read_text()) == first.holder
    assert not lock_path.exists()


def test_state_lock_live_child_is_not_stale(
    state_path: Path, lock_path: Path, sleeping_child: subprocess.Popen[bytes]
) -> None:
    holder = write_lock(lock_path, sleeping_child.pid)
    error = acquire_error(state_path)
    assert str(error) == (
        f"{lock_path} is held by pid {sleeping_child.pid} on host {HOST} since "
        f"{STARTED_AT} (apply); wait for that run to finish"
    )
    assert error.holder == holder
    assert error.stale is False


def test_state_lock_killed_child_is_stale(
    state_path: Path, lock_path: Path, sleeping_child: subprocess.Popen[bytes]
) -> None:
    holder = write_lock(lock_path, sleeping_child.pid)
    sleeping_child.kill()
    sleeping_child.wait()
    error = acquire_error(state_path)
    assert str(error) == (
        f"{lock_path} is held by pid {sleeping_child.pid} on host {HOST} since "
        f"{STARTED_AT} (apply), which is no longer running: the lock is stale; "
        f"remove it with: ods-reconcile force-unlock {state_path}"
    )
    assert error.holder == holder
    assert error.stale is True
    assert json.loads(lock_path.read_text()) == holder


def test_state_lock_other_host_is_not_stale(
    state_path: Path, lock_path: Path, dead_pid: int
) -> None:
    holder = write_lock(lock_path, dead_pid, host=OTHER_HOST, command="drift")
    error = acquire_error(state_path)
    assert str(error) == (
        f"{lock_path} is held by pid {dead_pid} on host {OTHER_HOST} since "
        f"{STARTED_AT} (drift); wait for that run to finish. This host cannot "
        "check whether it is still running; if it has ended, remove the lock "
        f"with: ods-reconcile force-unlock --yes {state_path}"
    )
    assert error.holder == holder
    assert error.stale is False


def test_state_lock_permission_error_means_running(
    state_path: Path, lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    write_lock(lock_path, 4321)
    monkeypatch.setattr(os, "kill", kill)
    error = acquire_error(state_path)
    assert error.stale is False
    assert str(error).endswith("(apply); wait for that run to finish")


def test_state_lock_hint_quotes_state_path(tmp_path: Path, dead_pid: int) -> None:
    state_path = tmp_path / "my state.json"
    write_lock(tmp_path / "my state.json.lock", dead_pid)
    error = acquire_error(state_path)
    assert str(error).endswith(f"ods-reconcile force-unlock '{state_path}'")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty file"),
        ("  \n", "empty file"),
        ('{"pid": 12', "invalid JSON at line 1, column 11: Expecting ',' delimiter"),
        ("[1234]", "a JSON list, not an object"),
        ('{"host": "h", "started_at": "t", "command": "c"}', "'pid' is missing"),
        ('{"pid": "12"}', "'pid' is '12', not a positive integer"),
        ('{"pid": 0}', "'pid' is 0, not a positive integer"),
        ('{"pid": true}', "'pid' is True, not a positive integer"),
        ('{"pid": 12, "started_at": "t", "command": "c"}', "'host' is missing"),
        ('{"pid": 12, "host": 3}', "'host' is 3, not a string"),
        ('{"pid": 12, "host": "h", "started_at": "t"}', "'command' is missing"),
    ],
    ids=[
        "empty",
        "blank",
        "truncated",
        "list",
        "no-pid",
        "pid-text",
        "pid-zero",
        "pid-bool",
        "no-host",
        "host-number",
        "no-command",
    ],
)
@pytest.mark.usefixtures("fast_rereads")
def test_state_lock_invalid_lock_file(
    state_path: Path, lock_path: Path, content: str, problem: str
) -> None:
    lock_path.write_text(content)
    error = acquire_error(state_path)
    assert str(error) == (
        f"{lock_path} is not a valid lock file ({problem}); if no run is using "
        f"{state_path}, remove it with: ods-reconcile force-unlock {state_path}"
    )
    assert error.holder is None
    assert error.stale is False
    assert lock_path.read_text() == content


def test_state_lock_unreadable_lock_file(state_path: Path, lock_path: Path) -> None:
    lock_path.mkdir()
    error = acquire_error(state_path)
    assert str(error) == (
        f"{lock_path} is not a valid lock file (cannot read it: Is a directory); "
        f"if no run is using {state_path}, remove it with: "
        f"ods-reconcile force-unlock {state_path}"
    )
    assert error.holder is None


def test_state_lock_release_keeps_replaced_lock(
    state_path: Path, lock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with StateLock(state_path, "apply"):
        lock_path.unlink()
        holder = write_lock(lock_path, os.getpid(), command="apply")
    assert json.loads(lock_path.read_text()) == holder
    assert caplog.messages == [
        f"{lock_path} now contains another run's lock, so it was left in place"
    ]


def test_state_lock_release_after_removal_warns(
    state_path: Path, lock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with StateLock(state_path, "apply"):
        lock_path.unlink()
    assert not lock_path.exists()
    assert caplog.messages == [f"{lock_path} was removed while this run held it"]


def contend_in_threads(
    state_path: Path, contenders: int
) -> tuple[list[dict[str, Any]], list[StateLockedError]]:
    """Start threads that acquire at once and hold until all have tried."""
    started = threading.Barrier(contenders)
    tried = threading.Barrier(contenders)
    won: list[dict[str, Any]] = []
    errors: list[StateLockedError] = []

    def contend() -> None:
        lock = StateLock(state_path, "apply")
        started.wait()
        try:
            lock.acquire()
            assert lock.holder is not None
            won.append(lock.holder)
        except StateLockedError as error:
            errors.append(error)
        tried.wait()
        lock.release()

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, errors


def test_state_lock_concurrent_threads_one_wins(
    state_path: Path, lock_path: Path
) -> None:
    for _ in range(20):
        won, errors = contend_in_threads(state_path, 8)
        assert len(won) == 1
        assert len(errors) == 7
        assert [error.holder for error in errors] == won * 7
        assert not lock_path.exists()


CONTENDER = """
import sys, time
from pathlib import Path
from reconciler.lock import StateLock, StateLockedError

state_path, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with StateLock(state_path, "apply"):
        print("won", flush=True)
        sys.stdin.read()
except StateLockedError:
    print("lost", flush=True)
"""


def test_state_lock_concurrent_processes_one_wins(
    state_path: Path, lock_path: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    command = [sys.executable, "-c", CONTENDER, str(state_path), str(go)]
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        go.touch()
        outcomes = []
        for process in processes:
            assert process.stdout is not None
            outcomes.append(process.stdout.readline())
        assert sorted(outcomes) == ["lost\n", "lost\n", "lost\n", "won\n"]
        assert lock_path.exists()
    finally:
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=10)
    assert [process.returncode for process in processes] == [0, 0, 0, 0]
    assert not lock_path.exists()


def test_force_unlock_returns_holder(
    state_path: Path, lock_path: Path, dead_pid: int
) -> None:
    holder = write_lock(lock_path, dead_pid)
    assert force_unlock(state_path) == holder
    assert not lock_path.exists()


def test_force_unlock_without_lock_returns_none(state_path: Path) -> None:
    assert force_unlock(state_path) is None


@pytest.mark.usefixtures("fast_rereads")
def test_force_unlock_invalid_lock_returns_empty(
    state_path: Path, lock_path: Path
) -> None:
    lock_path.write_text("{")
    assert force_unlock(state_path) == {}
    assert not lock_path.exists()


def invoke_force_unlock(*args: str) -> Result:
    return CliRunner().invoke(force_unlock_command, list(args))


def test_force_unlock_command_removes_stale_lock(
    state_path: Path, lock_path: Path, dead_pid: int
) -> None:
    write_lock(lock_path, dead_pid)
    result = invoke_force_unlock(str(state_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Removed the lock of {state_path} held by pid {dead_pid} on host {HOST} "
        f"since {STARTED_AT}\n"
    )
    assert result.stderr == ""
    assert not lock_path.exists()


def test_force_unlock_command_without_lock(state_path: Path) -> None:
    result = invoke_force_unlock(str(state_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"No lock on {state_path}\n"
    assert result.stderr == ""


def test_force_unlock_command_rejects_live_holder(
    state_path: Path, lock_path: Path, sleeping_child: subprocess.Popen[bytes]
) -> None:
    holder = write_lock(lock_path, sleeping_child.pid)
    result = invoke_force_unlock(str(state_path))
    assert result.exit_code == 1
    assert isinstance(result.exception, StateLockedError)
    assert str(result.exception) == (
        f"{lock_path} is held by pid {sleeping_child.pid} on host {HOST} since "
        f"{STARTED_AT} (apply), which is still running; wait for that run to "
        "finish, or pass --yes to remove the lock anyway"
    )
    assert result.exception.holder == holder
    assert result.stdout == ""
    assert json.loads(lock_path.read_text()) == holder


def test_force_unlock_command_yes_removes_live_holder(
    state_path: Path, lock_path: Path, sleeping_child: subprocess.Popen[bytes]
) -> None:
    write_lock(lock_path, sleeping_child.pid)
    result = invoke_force_unlock("--yes", str(state_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Removed the lock of {state_path} held by pid {sleeping_child.pid} on "
        f"host {HOST} since {STARTED_AT}\n"
    )
    assert not lock_path.exists()


def test_force_unlock_command_other_host_needs_yes(
    state_path: Path, lock_path: Path, dead_pid: int
) -> None:
    holder = write_lock(lock_path, dead_pid, host=OTHER_HOST)
    result = invoke_force_unlock(str(state_path))
    assert result.exit_code == 1
    assert str(result.exception) == (
        f"{lock_path} is held by pid {dead_pid} on host {OTHER_HOST} since "
        f"{STARTED_AT} (apply), on another host, so this host cannot check "
        "whether it still runs; wait for that run to finish, or pass --yes to "
        "remove the lock anyway"
    )
    assert json.loads(lock_path.read_text()) == holder

    result = invoke_force_unlock(str(state_path), "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Removed the lock of {state_path} held by pid {dead_pid} on host "
        f"{OTHER_HOST} since {STARTED_AT}\n"
    )
    assert not lock_path.exists()


@pytest.mark.usefixtures("fast_rereads")
def test_force_unlock_command_removes_invalid_lock(
    state_path: Path, lock_path: Path
) -> None:
    lock_path.write_text("")
    result = invoke_force_unlock(str(state_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Removed the invalid lock file of {state_path} (empty file)\n"
    )
    assert not lock_path.exists()


def test_force_unlock_through_cli_reports_refusal(
    state_path: Path, lock_path: Path
) -> None:
    write_lock(lock_path, os.getpid())
    result = CliRunner().invoke(cli, ["force-unlock", str(state_path)])
    assert result.exit_code == EXIT_LOCKED
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: {lock_path} is held by pid {os.getpid()} on host {HOST} since "
        f"{STARTED_AT} (apply), which is still running; wait for that run to "
        "finish, or pass --yes to remove the lock anyway\n"
    )
    assert lock_path.exists()
