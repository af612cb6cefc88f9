"""GitHub Actions integration: workflow annotations and the job summary."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import click

PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$")


def on_github_actions(environ: Mapping[str, str] = os.environ) -> bool:
    """Tell whether the process runs as a GitHub Actions step."""
    return environ.get("GITHUB_ACTIONS") == "true"


def annotate_problems(problems: Iterable[str]) -> None:
    """Print manifest problems as error annotations shown on the pull request diff."""
    for problem in problems:
        match = PROBLEM.match(problem)
        if match is None:
            click.echo(f"::error::{_escape_data(problem)}")
            continue
        properties = ",".join(
            f"{name}={_escape_property(match[name])}"
            for name in ("file", "line", "col")
        )
        click.echo(f"::error {properties}::{_escape_data(match['message'])}")


def append_step_summary(markdown: str, environ: Mapping[str, str] = os.environ) -> None:
    """Append Markdown to the job summary page, when the runner provides one."""
    path = environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(markdown.rstrip("\n") + "\n\n")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
