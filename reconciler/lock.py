"""The lock that lets one run at a time use a state file.

The lock is a file beside the state file, created with O_CREAT | O_EXCL, so that
exactly one of several runs starting at once creates it. It records its holder,
so that a run that finds it can name the run to wait for, or tell that the
holder has died and left a stale lock. A lock is never taken over automatically:
`ods-reconcile force-unlock` removes it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from reconciler.errors import ReconcilerError, StateError
from reconciler.state import utc_now

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
LOCK_FILE_MODE = 0o644
# A run writes its holder record right after creating the lock file, so a reader
# that finds the file empty or partly written rereads it for a while before
# reporting it as invalid.
READ_ATTEMPTS = 10
READ_INTERVAL_SECONDS = 0.05
# The lock file can disappear between a failed creation and the reading of its
# holder, because its run released it, so creation is tried again.
CREATE_ATTEMPTS = 3
HOLDER_FIELDS = ("host", "started_at", "command")


class StateLockedError(ReconcilerError):
    """The state file's lock is held by another run, or left by a dead one."""

    def __init__(
        self, message: str, *, holder: dict[str, Any] | None, stale: bool
    ) -> None:
        super().__init__(message)
        self.holder = holder
        self.stale = stale


@dataclass(frozen=True)
class LockFile:
    """The content of an existing lock file: its holder, or why it is invalid."""

    holder: dict[str, Any] | None
    problem: str | None = None


def lock_path_for(state_path: Path) -> Path:
    """Return the lock file of a state file: its path with .lock appended."""
    return state_path.with_name(state_path.name + LOCK_SUFFIX)


class StateLock:
    """Exclusive use of a state file by this process, within a with-block."""

    def __init__(self, state_path: Path, command: str) -> None:
        self.state_path = state_path
        self.path = lock_path_for(state_path)
        self.command = command
        self.holder: dict[str, Any] | None = None
        self._content = b""
        # Device and inode of the lock file this object created.
        self._identity: tuple[int, int] | None = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock file for this process, or raise StateLockedError."""
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": utc_now(),
            "command": self.command,
        }
        content = (json.dumps(holder) + "\n").encode("utf-8")

        for _ in range(CREATE_ATTEMPTS):
            descriptor = _create_exclusive(self.path)
            if descriptor is not None:
                self._identity = _write_holder(descriptor, self.path, content)
                self._content = content
                self.holder = holder
                return
            lock = read_lock(self.path)
            if lock is not None:
                raise locked_error(self.state_path, lock)
        raise StateLockedError(
            f"{self.path} was taken and released by other runs {CREATE_ATTEMPTS} "
            "times in a row; try again",
            holder=None,
            stale=False,
        )

    def release(self) -> None:
        """Remove the lock file, if it is still the one that acquire created."""
        identity, self._identity = self._identity, None
        self.holder = None
        if identity is None:
            return

        try:
            status = os.stat(self.path)
            content = self.path.read_bytes()
        except FileNotFoundError:
            log.warning("%s was removed while this run held it", self.path)
            return
        except OSError as error:
            log.warning(
                "failed to read %s to release it: %s", self.path, error.strerror
            )
            return
        if (status.st_dev, status.st_ino) != identity or content != self._content:
            log.warning(
                "%s now contains another run's lock, so it was left in place", self.path
            )
            return

        # NOTE: if a force-unlock and a new run's acquire both happen between the
        # check above and this unlink, the unlink removes the new run's lock.
        try:
            self.path.unlink()
        except OSError as error:
            log.warning("failed to remove %s: %s", self.path, error.strerror)


def _create_exclusive(path: Path) -> int | None:
    """Create the file and open it for writing, or return None if it exists."""
    try:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, LOCK_FILE_MODE)
    except FileExistsError:
        return None
    except OSError as error:
        raise StateError(
            f"failed to create the lock file {path}: {error.strerror}; "
            f"check that {path.parent} exists and is writable"
        ) from None


def _write_holder(descriptor: int, path: Path, content: bytes) -> tuple[int, int]:
    """Write and fsync the holder record, and return the file's device and inode."""
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
            status = os.fstat(handle.fileno())
    except OSError as error:
        path.unlink(missing_ok=True)
        raise StateError(
            f"failed to write the lock file {path}: {error.strerror}"
        ) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return status.st_dev, status.st_ino


def read_lock(path: Path) -> LockFile | None:
    """Read a lock file's holder, or return None if there is no lock file."""
    problem = None
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(READ_INTERVAL_SECONDS)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            return LockFile(None, f"cannot read it: {error.strerror}")
        except UnicodeDecodeError:
            return LockFile(None, "not UTF-8 text")
        holder, problem = parse_holder(text)
        if holder is not None:
            return LockFile(holder)
    return LockFile(None, problem)


def parse_holder(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a lock file's JSON into its holder, or return None and the problem."""
    if not text.strip():
        return None, "empty file"
    try:
        holder = json.loads(text)
    except json.JSONDecodeError as error:
        return None, (
            f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        )
    if not isinstance(holder, dict):
        return None, f"a JSON {type(holder).__name__}, not an object"

    pid = holder.get("pid")
    if "pid" not in holder:
        return None, "'pid' is missing"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None, f"'pid' is {pid!r}, not a positive integer"
    for field in HOLDER_FIELDS:
        if field not in holder:
            return None, f"{field!r} is missing"
        if not isinstance(holder[field], str):
            return None, f"{field!r} is {holder[field]!r}, not a string"
    return holder, None


def is_running(pid: int) -> bool:
    """Tell whether a process of this host has this pid; True when unsure."""
    if sys.platform == "win32":
        # On Windows, signal 0 is CTRL_C_EVENT, which the os.kill documentation
        # describes as a console control event to send, not as an existence check.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to another user.
        return True
    return True


def on_this_host(holder: dict[str, Any]) -> bool:
    """Tell whether the holder runs on this host, where its pid can be checked."""
    return bool(holder["host"] == socket.gethostname())


def is_stale(holder: dict[str, Any]) -> bool:
    """Tell whether the holder ran on this host and its process has ended."""
    return on_this_host(holder) and not is_running(holder["pid"])


def describe_holder(holder: dict[str, Any]) -> str:
    """Name a holder by pid, host and start time, as messages show it."""
    return f"pid {holder['pid']} on host {holder['host']} since {holder['started_at']}"


def force_unlock_hint(state_path: Path, *, yes: bool = False) -> str:
    """Return the command that removes the lock of a state file."""
    option = " --yes" if yes else ""
    return f"ods-reconcile force-unlock{option} {shlex.quote(str(state_path))}"


def locked_error(state_path: Path, lock: LockFile) -> StateLockedError:
    """Build the error for a lock found when acquiring it."""
    lock_path = lock_path_for(state_path)
    holder = lock.holder
    if holder is None:
        return StateLockedError(
            f"{lock_path} is not a valid lock file ({lock.problem}); if no run is "
            f"using {state_path}, remove it with: {force_unlock_hint(state_path)}",
            holder=None,
            stale=False,
        )

    lock_held = (
        f"{lock_path} is held by {describe_holder(holder)} ({holder['command']})"
    )
    stale = is_stale(holder)
    if stale:
        message = (
            f"{lock_held}, which is no longer running: the lock is stale; "
            f"remove it with: {force_unlock_hint(state_path)}"
        )
    elif on_this_host(holder):
        message = f"{lock_held}; wait for that run to finish"
    else:
        message = (
            f"{lock_held}; wait for that run to finish. This host cannot check whether "
            "it is still running; if it has ended, remove the lock with: "
            f"{force_unlock_hint(state_path, yes=True)}"
        )
    return StateLockedError(message, holder=holder, stale=stale)


def force_unlock(state_path: Path) -> dict[str, Any] | None:
    """Remove the lock file of a state file, with no check of its holder.

    Return the holder it named, None if there was no lock file, and an empty
    dict if it was not a valid lock file.
    """
    lock_path = lock_path_for(state_path)
    lock = read_lock(lock_path)
    if lock is None:
        return None
    return remove_lock(lock_path, lock)


def remove_lock(lock_path: Path, lock: LockFile) -> dict[str, Any] | None:
    """Remove a lock file read before, and return its holder as force_unlock does."""
    try:
        lock_path.unlink()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateError(
            f"failed to remove {lock_path}: {error.strerror}; "
            f"check the permissions of {lock_path.parent}"
        ) from None
    return lock.holder if lock.holder is not None else {}


def live_holder_error(state_path: Path, holder: dict[str, Any]) -> StateLockedError:
    """Build the error of force-unlock for a holder that may still be running."""
    lock_held = f"{lock_path_for(state_path)} is held by {describe_holder(holder)}"
    if on_this_host(holder):
        status = "which is still running"
    else:
        status = "on another host, so this host cannot check whether it still runs"
    return StateLockedError(
        f"{lock_held} ({holder['command']}), {status}; wait for that run to finish, "
        "or pass --yes to remove the lock anyway",
        holder=holder,
        stale=False,
    )


@click.command("force-unlock")
@click.argument("state_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--yes",
    is_flag=True,
    help="Remove the lock even when the run holding it may still be running.",
)
def force_unlock_command(state_file: Path, yes: bool) -> None:
    """Remove the lock of STATE_FILE left by a run that did not release it.

    A lock whose run is still running on this host, or runs on another host,
    is removed only with --yes.
    """
    lock_path = lock_path_for(state_file)
    lock = read_lock(lock_path)
    if lock is None:
        click.echo(f"No lock on {state_file}")
        return
    if lock.holder is not None and not yes and not is_stale(lock.holder):
        raise live_holder_error(state_file, lock.holder)

    holder = remove_lock(lock_path, lock)
    if holder is None:
        click.echo(f"No lock on {state_file}")
    elif not holder:
        click.echo(f"Removed the invalid lock file of {state_file} ({lock.problem})")
    else:
        click.echo(
            f"Removed the lock of {state_file} held by {describe_holder(holder)}"
        )
