"""Run a command and write its wall time, CPU time and peak RSS as JSON.

Usage: python measure_child.py RESULT_PATH COMMAND [ARGUMENT...]

On Linux a child's peak RSS starts at its parent's, because exec records the
high-water mark of the memory that the child had before it. A benchmark that
has imported the package would inflate every figure. This launcher imports
only a few standard modules, so the figure it passes on is the command's own,
as `time -v` reports it. The command inherits the standard streams and its exit
code becomes the launcher's.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    """Spawn the command, wait for it, write the figures, return its exit code."""
    result_path, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawn(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall_seconds = time.perf_counter() - started

    # Linux counts ru_maxrss in kibibytes, macOS in bytes.
    rss_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    returncode = os.waitstatus_to_exitcode(status)
    figures = {
        "returncode": returncode,
        "wall_seconds": wall_seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": rss_bytes,
    }
    with open(result_path, "w", encoding="utf-8") as result:
        json.dump(figures, result)
    # A command killed by signal N exits with 128 + N, as in a shell.
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main())
