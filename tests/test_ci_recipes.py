"""The CI recipes and the pre-commit hook: structure, and commands that exist."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests
import yaml
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.simulator import SimulatedDataset, Simulator
from tests.conftest import API_KEY, ROOT, write_manifest

StartSimulator = Callable[..., Simulator]

GITHUB = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
MARKER = "<!-- ods-reconciler-plan -->"
SUBCOMMANDS = {"validate", "plan", "apply", "drift"}
# Options each recipe passes, beyond the manifests argument.
RECIPE_OPTIONS = {
    ("plan", "--format"),
    ("plan", "--out"),
    ("plan", "--detailed-exitcode"),
    ("apply", "--state"),
    ("apply", "--allow-unpublish"),
    ("drift", "--report-unmanaged"),
}
# Words after which a shell word is in command position.
COMMAND_PREFIXES = {"!", "if", "then", "else", "elif", "do", "while", "until", "time"}


@functools.cache
def load(path: Path) -> Any:
    """Parse a YAML file once per session. Callers must not modify the result."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def github_triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads YAML 1.1, where the unquoted key `on` is the boolean true.
    triggers: dict[str, Any] = workflow[True]
    return triggers


def github_steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            yield name, step


def github_scripts(workflow: dict[str, Any]) -> list[str]:
    return [step["run"] for _, step in github_steps(workflow) if "run" in step]


def gitlab_jobs(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: job
        for name, job in pipeline.items()
        if isinstance(job, dict) and "script" in job
    }


def gitlab_scripts(pipeline: dict[str, Any]) -> list[str]:
    scripts = list(pipeline["default"]["before_script"])
    for job in gitlab_jobs(pipeline).values():
        for key in ("before_script", "script", "after_script"):
            scripts += job.get(key, [])
    return scripts


def split_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def logical_lines(script: str) -> Iterator[list[str]]:
    """Yield the words of each shell line, joining continued and quoted lines.

    Commands inside a quoted command substitution stay one word, so they are not
    found: the recipes call ods-reconcile outside quotes only.
    """
    pending = ""
    for line in script.replace("\\\n", " ").splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = split_words(pending)
        except ValueError:
            continue
        pending = ""
        yield words
    assert pending == "", f"unbalanced quotes in: {pending!r}"


def is_separator(word: str) -> bool:
    return bool(word) and set(word) <= set("();<>|&")


def invocations(scripts: list[str]) -> list[list[str]]:
    """Return the words of each ods-reconcile command, up to the first operator."""
    found = []
    for script in scripts:
        for words in logical_lines(script):
            found += invocations_in(words)
    return found


def invocations_in(words: list[str]) -> list[list[str]]:
    found = []
    at_command = True
    for index, word in enumerate(words):
        if at_command and word == "ods-reconcile":
            rest = words[index:]
            end = next((i for i, w in enumerate(rest) if is_separator(w)), len(rest))
            found.append(rest[:end])
        at_command = is_separator(word) or word in COMMAND_PREFIXES
    return found


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }


def command_problems(words: list[str]) -> list[str]:
    """List the subcommands, options and choices of a command line that do not exist."""
    arguments = words[1:]
    group_options = options_of(cli)
    while arguments and arguments[0] in group_options:
        arguments = arguments[1:]
    if not arguments or arguments[0] not in cli.commands:
        return [f"unknown subcommand in {shlex.join(words)}"]

    name, arguments = arguments[0], arguments[1:]
    options = options_of(cli.commands[name])
    problems = []
    values = iter(arguments)
    for word in values:
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            continue
        option, has_value, value = word.partition("=")
        param = options.get(option)
        if param is None:
            problems.append(f"{name}: unknown option {option}")
            continue
        if param.is_flag or param.count:
            continue
        if not has_value:
            value = next(values, "")
        problems += choice_problems(name, param, value)
    return problems


def choice_problems(name: str, param: click.Option, value: str) -> list[str]:
    if not isinstance(param.type, click.Choice) or value.startswith("$"):
        return []
    if value in param.type.choices:
        return []
    return [f"{name}: {value!r} is not a choice of {param.opts[0]}"]


def options_used(commands: list[list[str]]) -> set[tuple[str, str]]:
    return {
        (words[1], word.partition("=")[0])
        for words in commands
        for word in words[2:]
        if word.startswith("--")
    }


def case_exit_codes(scripts: list[str]) -> set[int]:
    arms = re.compile(r"^\s*(\d+)\)", re.MULTILINE)
    return {int(code) for script in scripts for code in arms.findall(script)}


RECIPES = {
    "github": (GITHUB, github_scripts),
    "gitlab": (GITLAB, gitlab_scripts),
}


@pytest.fixture(params=sorted(RECIPES))
def recipe_scripts(request: pytest.FixtureRequest) -> list[str]:
    path, scripts = RECIPES[request.param]
    return scripts(load(path))


# --- Both recipes -----------------------------------------------------------------


def test_recipes_call_every_subcommand(recipe_scripts: list[str]) -> None:
    used = {words[1] for words in invocations(recipe_scripts)}
    assert used == SUBCOMMANDS


def test_recipes_use_existing_options(recipe_scripts: list[str]) -> None:
    problems = [
        problem
        for words in invocations(recipe_scripts)
        for problem in command_problems(words)
    ]
    assert problems == []


def test_recipes_pass_expected_options(recipe_scripts: list[str]) -> None:
    assert options_used(invocations(recipe_scripts)) == RECIPE_OPTIONS


def test_recipes_handle_defined_exit_codes(recipe_scripts: list[str]) -> None:
    # The group's help lists the exit codes, one per line: "  2  changes pending".
    defined = {int(code) for code in re.findall(r"^ +(\d+)  ", cli.epilog or "", re.M)}
    assert 0 in defined
    handled = case_exit_codes(recipe_scripts)
    assert handled <= defined
    assert handled == {0, 2, 3, 4, 5}


def test_recipes_never_name_api_key(recipe_scripts: list[str]) -> None:
    for script in recipe_scripts:
        assert "ODS_API_KEY" not in script
        assert "set -x" not in script


@pytest.mark.parametrize(
    ("words", "problems"),
    [
        (["ods-reconcile", "plan", "m/", "--format", "markdown"], []),
        (["ods-reconcile", "-v", "plan", "m/", "--format=json"], []),
        (
            ["ods-reconcile", "plan", "--format", "html"],
            ["plan: 'html' is not a choice of --format"],
        ),
        (["ods-reconcile", "plan", "--bogus"], ["plan: unknown option --bogus"]),
        (
            ["ods-reconcile", "frobnicate"],
            ["unknown subcommand in ods-reconcile frobnicate"],
        ),
    ],
    ids=["valid", "global-option", "bad-choice", "bad-option", "bad-subcommand"],
)
def test_command_problems_detects_rot(words: list[str], problems: list[str]) -> None:
    assert command_problems(words) == problems


def test_invocations_skip_echoed_text() -> None:
    script = (
        'echo "ods-reconcile drift exited"\n'
        "set +e\n"
        "if ! ods-reconcile validate m/ \\\n"
        "    --bogus; then exit 1; fi\n"
        "ods-reconcile plan m/ > plan.md 2>&1 && ods-reconcile drift m/\n"
    )
    assert invocations([script]) == [
        ["ods-reconcile", "validate", "m/", "--bogus"],
        ["ods-reconcile", "plan", "m/"],
        ["ods-reconcile", "drift", "m/"],
    ]


# --- GitHub Actions ----------------------------------------------------------------


def test_github_workflow_triggers() -> None:
    triggers = github_triggers(load(GITHUB))
    assert set(triggers) == {"pull_request", "push", "schedule", "workflow_dispatch"}
    assert triggers["pull_request"]["paths"] == ["manifests/**"]
    assert triggers["push"]["branches"] == ["main"]
    assert [entry["cron"] for entry in triggers["schedule"]] == ["17 5 * * *"]
    replan = triggers["workflow_dispatch"]["inputs"]["replan_and_apply"]
    assert replan["type"] == "boolean"
    assert replan["default"] is False


def test_github_workflow_jobs() -> None:
    jobs = load(GITHUB)["jobs"]
    assert {name: job["if"] for name, job in jobs.items()} == {
        "plan": "github.event_name == 'pull_request'",
        "apply": "github.ref == 'refs/heads/main' && (github.event_name == 'push' "
        "|| (github.event_name == 'workflow_dispatch' && inputs.replan_and_apply))",
        "drift": "github.event_name == 'schedule' || "
        "(github.event_name == 'workflow_dispatch' && !inputs.replan_and_apply)",
    }


def test_github_key_comes_from_secrets() -> None:
    workflow = load(GITHUB)
    secret_env = {
        (job, step.get("name", ""), key): value
        for job, step in github_steps(workflow)
        for key, value in step.get("env", {}).items()
        if "secrets." in value
    }
    assert secret_env == {
        ("plan", "Plan", "ODS_API_KEY"): "${{ secrets.ODS_API_KEY }}",
        ("apply", "Apply", "ODS_API_KEY"): "${{ secrets.ODS_API_KEY }}",
        ("drift", "Check for drift", "ODS_API_KEY"): "${{ secrets.ODS_API_KEY }}",
    }
    assert GITHUB.read_text().count("secrets.") == 3


def test_github_comment_found_by_marker() -> None:
    steps = {step.get("name"): step for _, step in github_steps(load(GITHUB))}
    comment = steps["Post or update the plan comment"]
    script = comment["with"]["script"]
    assert comment["uses"] == "actions/github-script@v7"
    assert f"const marker = '{MARKER}';" in script
    assert "github.rest.issues.listComments" in script
    assert "github.rest.issues.updateComment" in script
    assert "github.rest.issues.createComment" in script


def test_github_plan_saved_as_artifact() -> None:
    steps = {step.get("name"): step for _, step in github_steps(load(GITHUB))}
    upload = steps["Keep the plan"]
    download = steps["Download the reviewed plan"]
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["with"]["path"] == "plan.json"
    assert upload["with"]["name"] == "ods-plan"
    assert "--name ods-plan --dir reviewed-plan" in download["run"]
    assert download["if"] == "github.event_name == 'push'"


def test_github_applies_one_at_a_time() -> None:
    apply = load(GITHUB)["jobs"]["apply"]
    assert apply["concurrency"] == {"group": "ods-apply", "cancel-in-progress": False}
    assert apply["permissions"] == {
        "contents": "write",
        "actions": "read",
        "pull-requests": "read",
    }


def test_github_state_kept_on_branch() -> None:
    workflow = load(GITHUB)
    steps = {step.get("name"): step for _, step in github_steps(workflow)}
    checkout = steps["Check out the state branch"]
    commit = steps["Commit the state file"]
    assert checkout["with"] == {"ref": "ods-state", "path": "ods-state"}
    assert workflow["env"]["STATE_FILE"] == "ods-state/ods-reconciler.state.json"
    assert commit["if"] == "always() && steps.apply.outcome != 'skipped'"
    assert "git push origin HEAD:ods-state" in commit["run"]


def run_python(
    script: str, data: Any, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run a recipe's Python snippet on JSON input, as its shell step does."""
    return subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        env={**os.environ, **variables},
        check=False,
    )


def download_snippet(name: str) -> str:
    steps = {step.get("name"): step for _, step in github_steps(load(GITHUB))}
    script: str = steps["Download the reviewed plan"]["env"][name]
    return script


PULL = {"number": 17, "merged_at": "2026-11-27T09:12:44Z", "head": {"sha": "b" * 40}}


@pytest.mark.parametrize(
    ("pulls", "output"),
    [
        ([{**PULL, "merge_commit_sha": "a" * 40}], f"17 {'b' * 40}\n"),
        ([{**PULL, "merged_at": None, "merge_commit_sha": "a" * 40}], ""),
        ([{**PULL, "merge_commit_sha": "c" * 40}], ""),
        ([], ""),
    ],
    ids=["merged", "open", "other-merge", "none"],
)
def test_github_find_merged_pull(pulls: list[Any], output: str) -> None:
    script = download_snippet("FIND_MERGED_PULL")
    result = run_python(script, pulls, GITHUB_SHA="a" * 40)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


@pytest.mark.parametrize(
    ("runs", "output"),
    [
        ([{"databaseId": 9, "conclusion": "success"}], "9 success\n"),
        ([{"databaseId": 9, "conclusion": ""}], "9 unfinished\n"),
        ([], ""),
    ],
    ids=["success", "unfinished", "none"],
)
def test_github_find_plan_run(runs: list[Any], output: str) -> None:
    result = run_python(download_snippet("FIND_PLAN_RUN"), runs)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


# --- GitLab CI ---------------------------------------------------------------------

REPLAN_RULE = (
    '$CI_PIPELINE_SOURCE == "web" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH '
    '&& $ODS_REPLAN == "1"'
)


def test_gitlab_jobs_and_rules() -> None:
    jobs = gitlab_jobs(load(GITLAB))
    conditions = {
        name: [rule["if"] for rule in job["rules"]] for name, job in jobs.items()
    }
    assert conditions == {
        "validate": [
            '$CI_PIPELINE_SOURCE == "merge_request_event"',
            '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH',
            REPLAN_RULE,
        ],
        "plan": ['$CI_PIPELINE_SOURCE == "merge_request_event"'],
        "apply": [
            '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH',
            REPLAN_RULE,
        ],
        "drift": ['$CI_PIPELINE_SOURCE == "schedule"'],
    }


def test_gitlab_applies_one_at_a_time() -> None:
    apply = load(GITLAB)["apply"]
    assert apply["resource_group"] == "ods-portal"
    assert apply["cache"] == {
        "key": "ods-reconciler-state",
        "paths": ["ods-state/ods-reconciler.state.json"],
        "policy": "pull-push",
        "when": "always",
    }
    assert apply["artifacts"]["when"] == "always"
    assert apply["artifacts"]["paths"] == ["ods-state/ods-reconciler.state.json"]


def test_gitlab_note_updated_by_marker() -> None:
    pipeline = load(GITLAB)
    script = "\n".join(pipeline["plan"]["script"])
    assert pipeline["variables"]["PLAN_MARKER"] == MARKER
    assert 'auth="PRIVATE-TOKEN: $ODS_RECONCILER_GITLAB_TOKEN"' in script
    assert "$CI_API_V4_URL/projects/$CI_PROJECT_ID/merge_requests/" in script
    assert '--data @note.json "$notes_url/$note"' in script
    assert "--request PUT" in script
    assert "--request POST" in script


@pytest.mark.parametrize(
    ("notes", "output"),
    [
        ([{"id": 7, "author": {"id": 42}, "body": f"{MARKER}\nplan"}], "7\n"),
        ([{"id": 7, "author": {"id": 1}, "body": f"{MARKER}\nquoted"}], "none\n"),
        ([{"id": 8, "author": {"id": 42}, "body": "other"}] * 100, "more\n"),
        ([], "none\n"),
    ],
    ids=["found", "other-author", "full-page", "empty"],
)
def test_gitlab_find_note_script(notes: list[Any], output: str) -> None:
    script = load(GITLAB)["variables"]["FIND_NOTE"]
    environment = {**os.environ, "NOTE_AUTHOR_ID": "42", "PLAN_MARKER": MARKER}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(notes),
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


MR = {
    "iid": 17,
    "target_branch": "main",
    "sha": "b" * 40,
    "merge_commit_sha": None,
    "squash_commit_sha": None,
}


@pytest.mark.parametrize(
    ("merge_requests", "output"),
    [
        ([{**MR, "merge_commit_sha": "a" * 40}], "17\n"),
        ([{**MR, "squash_commit_sha": "a" * 40}], "17\n"),
        ([{**MR, "sha": "a" * 40}], "17\n"),
        ([{**MR, "merge_commit_sha": "a" * 40, "target_branch": "release"}], "\n"),
        ([MR], "\n"),
        ([], "\n"),
    ],
    ids=["merge-commit", "squash", "fast-forward", "other-target", "unrelated", "none"],
)
def test_gitlab_find_merge_request(merge_requests: list[Any], output: str) -> None:
    script = load(GITLAB)["variables"]["FIND_MERGE_REQUEST"]
    variables = {"CI_COMMIT_SHA": "a" * 40, "CI_DEFAULT_BRANCH": "main"}
    result = run_python(script, merge_requests, **variables)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


@pytest.mark.parametrize(
    ("merge_request", "output"),
    [({"head_pipeline": {"id": 310}}, "310\n"), ({"head_pipeline": None}, "\n")],
    ids=["pipeline", "none"],
)
def test_gitlab_find_head_pipeline(merge_request: Any, output: str) -> None:
    script = load(GITLAB)["variables"]["FIND_HEAD_PIPELINE"]
    result = run_python(script, merge_request)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


@pytest.mark.parametrize(
    ("jobs", "output"),
    [
        ([{"id": 5, "name": "validate", "status": "success"}], ""),
        ([{"id": 6, "name": "plan", "status": "canceled"}], "6 canceled\n"),
    ],
    ids=["no-plan-job", "plan-job"],
)
def test_gitlab_find_plan_job(jobs: list[Any], output: str) -> None:
    result = run_python(load(GITLAB)["variables"]["FIND_PLAN_JOB"], jobs)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


# --- pre-commit hook ---------------------------------------------------------------


def hook() -> dict[str, Any]:
    hooks = load(HOOKS)
    assert [entry["id"] for entry in hooks] == ["ods-reconcile-validate"]
    entry: dict[str, Any] = hooks[0]
    return entry


def hook_selects(path: str) -> bool:
    """Select files as pre-commit does: `files` and `exclude` searched in the path."""
    definition = hook()
    selected = re.search(definition["files"], path) is not None
    return selected and not re.search(definition.get("exclude", "^$"), path)


def run_hook(*files: str) -> subprocess.CompletedProcess[str]:
    definition = hook()
    environment = dict(os.environ)
    environment.pop("GITHUB_ACTIONS", None)
    environment["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    command = [*shlex.split(definition["entry"]), *definition.get("args", []), *files]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )


def test_hook_definition() -> None:
    definition = hook()
    assert definition["language"] == "python"
    assert definition["require_serial"] is True
    assert command_problems(shlex.split(definition["entry"])) == []


def test_hook_selects_manifests_only() -> None:
    candidates = sorted(
        path.relative_to(ROOT).as_posix()
        for folder in ("examples", "manifests", "schemas")
        if (ROOT / folder).is_dir()
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
    )
    assert [path for path in candidates if hook_selects(path)] == [
        "examples/manifest.yaml"
    ]
    assert hook_selects("manifests/portal/budget.yml")
    assert not hook_selects("examples/ci/gitlab-ci.yml")


def test_hook_validates_example_manifest() -> None:
    result = run_hook("examples/manifest.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 file valid: 16 datasets declared\n"
    assert result.stderr == ""


def test_hook_reports_invalid_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(
        "version: 1\ndatasets:\n  - uid: da_abc123\n    state: publised\n"
    )
    result = run_hook(str(manifest))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{manifest}:4:12: $.datasets[0].state: 'publised' is not one of "
        "'published', 'unpublished'\n"
        "Error: 1 problem found in the manifest\n"
    )


# --- Recipe steps run against a simulator ------------------------------------------

PORTAL = [
    SimulatedDataset("da_pub001", "roads", published=False),
    SimulatedDataset("da_syn002", "trees", published=True),
]
DESIRED = [("da_pub001", "published"), ("da_syn002", "published")]
# The manifests as another merge left them on main after the plan was reviewed.
MOVED_ON = [("da_pub001", "published"), ("da_syn002", "unpublished")]
WRONG_KEY = "wrong-key-0123456789"

# Stand-in for gh and curl, so that no recipe step under test reaches GitHub or
# GitLab. It appends its arguments to $STUB_LOG, then takes the first route of
# $STUB_ROUTES for its program whose "match" text occurs in its arguments. It
# prints the route's "stdout" and copies its "copy" file to --output or --dir.
STUB = """\
#!{python}
import json, os, shutil, sys
from pathlib import Path

program = Path(sys.argv[0]).name
arguments = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([program, *arguments]) + "\\n")
command = " ".join(arguments)
routes = json.loads(Path(os.environ["STUB_ROUTES"]).read_text())
for route in routes:
    if route["program"] == program and route["match"] in command:
        break
else:
    sys.exit(f"{{program}} stub: no canned answer for: {{command}}")
if "copy" in route:
    if "--output" in arguments:
        target = Path(arguments[arguments.index("--output") + 1])
    else:
        folder = Path(arguments[arguments.index("--dir") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(route["copy"]).name
    shutil.copyfile(route["copy"], target)
sys.stdout.write(route.get("stdout", ""))
"""
Route = dict[str, str]


def install_stubs(folder: Path, routes: list[Route]) -> None:
    """Write the gh and curl stubs to folder/bin and their routes beside them."""
    bin_folder = folder / "bin"
    bin_folder.mkdir(exist_ok=True)
    for program in ("gh", "curl"):
        stub = bin_folder / program
        stub.write_text(STUB.format(python=sys.executable))
        stub.chmod(0o755)
    (folder / "stub-routes.json").write_text(json.dumps(routes))


def stub_calls(folder: Path) -> list[list[str]]:
    log = folder / "stub-calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def run_step(
    script: str,
    folder: Path,
    simulator: Simulator,
    *,
    desired: list[tuple[str, str]] = DESIRED,
    routes: list[Route] | None = None,
    **variables: str,
) -> subprocess.CompletedProcess[str]:
    """Run a recipe's shell step as the runners do, with bash -eo pipefail.

    gh and curl are always the stubs of folder/bin, serving `routes`.
    """
    (folder / "manifests").mkdir(exist_ok=True)
    (folder / "ods-state").mkdir(exist_ok=True)
    write_manifest(folder / "manifests" / "portal.yaml", desired, simulator.url)
    install_stubs(folder, routes or [])
    search_path = [str(folder / "bin"), str(Path(sys.executable).parent)]
    environment = {
        "PATH": os.pathsep.join([*search_path, os.environ["PATH"]]),
        "HOME": str(folder),
        "ODS_API_KEY": API_KEY,
        "MANIFESTS": "manifests/",
        "STATE_FILE": "ods-state/ods-reconciler.state.json",
        "STUB_LOG": str(folder / "stub-calls.jsonl"),
        "STUB_ROUTES": str(folder / "stub-routes.json"),
        **variables,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def make_reviewed_plan(
    folder: Path,
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    desired: list[tuple[str, str]] = DESIRED,
) -> Path:
    """Save a plan with `plan --out` in-process, as the plan jobs do."""
    (folder / "manifests").mkdir(exist_ok=True)
    write_manifest(folder / "manifests" / "portal.yaml", desired, simulator.url)
    (folder / "artifact").mkdir()
    monkeypatch.chdir(folder)
    arguments = ["plan", "manifests/", "--out", "artifact/plan.json"]
    result = CliRunner().invoke(cli, arguments, env={"ODS_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    return folder / "artifact" / "plan.json"


def sent_jobs(simulator: Simulator) -> list[tuple[str, str]]:
    return [(job["action"], job["dataset_uid"]) for job in simulator.stats()["jobs"]]


def test_stub_rejects_unknown_call(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    result = run_step("curl https://gitlab.example.invalid/", tmp_path, simulator)
    assert result.returncode == 1
    assert result.stderr == (
        "curl stub: no canned answer for: https://gitlab.example.invalid/\n"
    )
    assert stub_calls(tmp_path) == [["curl", "https://gitlab.example.invalid/"]]


# --- GitHub Actions steps ----------------------------------------------------------

REPOSITORY = "riverton/portal"
MERGE_SHA = "5e1f0c2a" * 5
HEAD_SHA = "a9d4b7e1" * 5
PLAN_RUN_ID = "4242"
REPLAN = "${{ github.event_name == 'workflow_dispatch' && inputs.replan_and_apply }}"
ALLOW_UNPUBLISH = "${{ vars.ODS_ALLOW_UNPUBLISH }}"
# What the runner puts in each step's `env:` expressions.
EXPRESSIONS = {
    "${{ secrets.ODS_API_KEY }}": API_KEY,
    "${{ github.token }}": "github-token-for-tests",
    "${{ github.repository }}": REPOSITORY,
    ALLOW_UNPUBLISH: "",
    REPLAN: "false",
}
MERGED_PULL = {
    "number": 17,
    "merged_at": "2026-11-27T09:12:44Z",
    "merge_commit_sha": MERGE_SHA,
    "head": {"sha": HEAD_SHA},
}
LAST_PLAN_RUN = {"databaseId": int(PLAN_RUN_ID), "conclusion": "success"}
STALE_ANNOTATION = (
    "::error title=Stale plan::the manifests on main or some datasets on the portal "
    "changed since the reviewed plan, and the log above names what apply rejected. "
    "Make a new plan: push to a pull request that changes the manifests, review "
    "its plan and merge it, or have a maintainer run this workflow on main with "
    "replan_and_apply\n"
)


def github_step(name: str) -> str:
    script: str = github_step_definition(name)["run"]
    return script


def github_step_definition(name: str) -> dict[str, Any]:
    steps = {step.get("name"): step for _, step in github_steps(load(GITHUB))}
    step: dict[str, Any] = steps[name]
    return step


def github_variables(folder: Path) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(folder / "output.txt"),
        "GITHUB_STEP_SUMMARY": str(folder / "summary.md"),
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_SHA": MERGE_SHA,
        "GITHUB_WORKFLOW_REF": (
            f"{REPOSITORY}/.github/workflows/ods-reconcile.yml@refs/heads/main"
        ),
    }


def run_github_step(
    name: str,
    folder: Path,
    simulator: Simulator,
    *,
    expressions: dict[str, str] | None = None,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """Run a GitHub step with its `env:`, each expression given its test value."""
    values = {**EXPRESSIONS, **(expressions or {})}
    step = github_step_definition(name)
    environment = {
        variable: values[value] if value.startswith("${{") else value
        for variable, value in step.get("env", {}).items()
    }
    variables = {**github_variables(folder), **environment}
    return run_step(step["run"], folder, simulator, **options, **variables)


def github_routes(
    artifact: Path,
    pulls: list[dict[str, Any]] | None = None,
    runs: list[dict[str, Any]] | None = None,
) -> list[Route]:
    """Build the gh responses of the download step for a merge of pull request 17."""
    run_list = (
        "run list --workflow ods-reconcile.yml --event pull_request "
        f"--commit {HEAD_SHA} --limit 1 --json databaseId,conclusion"
    )
    return [
        {
            "program": "gh",
            "match": f"api repos/{REPOSITORY}/commits/{MERGE_SHA}/pulls",
            "stdout": json.dumps([MERGED_PULL] if pulls is None else pulls),
        },
        {
            "program": "gh",
            "match": run_list,
            "stdout": json.dumps([LAST_PLAN_RUN] if runs is None else runs),
        },
        {
            "program": "gh",
            "match": f"run download {PLAN_RUN_ID} --name ods-plan --dir reviewed-plan",
            "copy": str(artifact),
        },
    ]


def test_github_plan_step_runs(tmp_path: Path, start_simulator: StartSimulator) -> None:
    simulator = start_simulator(PORTAL)
    variables = github_variables(tmp_path)
    result = run_step(github_step("Plan"), tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Changes pending: see the pull request comment.\n"
    assert result.stderr == "Plan saved to plan.json\n"
    assert (tmp_path / "output.txt").read_text() == "exit_code=2\n"
    assert (tmp_path / "plan.md").read_text().startswith(f"{MARKER}\n")
    assert (tmp_path / "summary.md").read_text().startswith(f"{MARKER}\n")
    assert json.loads((tmp_path / "plan.json").read_text())["plan_version"] == 1


def test_github_plan_step_reports_failure(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    variables = {**github_variables(tmp_path), "ODS_API_KEY": WRONG_KEY}
    result = run_step(github_step("Plan"), tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "::error title=Plan failed::ods-reconcile plan exited with 1\n"
    )
    assert (tmp_path / "output.txt").read_text() == "exit_code=1\n"
    assert WRONG_KEY not in result.stderr


def test_github_merge_applies_reviewed_plan(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(PORTAL)
    routes = github_routes(make_reviewed_plan(tmp_path, simulator, monkeypatch))

    download = run_github_step(
        "Download the reviewed plan", tmp_path, simulator, routes=routes
    )
    assert download.returncode == 0, download.stderr
    assert download.stdout == (
        f"Applying the plan of pull request #17 made by run {PLAN_RUN_ID}.\n"
    )
    assert [call[:3] for call in stub_calls(tmp_path)] == [
        ["gh", "api", f"repos/{REPOSITORY}/commits/{MERGE_SHA}/pulls"],
        ["gh", "run", "list"],
        ["gh", "run", "download"],
    ]

    applied = run_github_step("Apply", tmp_path, simulator)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.startswith(
        "Applying the plan saved in reviewed-plan/plan.json"
    )
    assert applied.stdout.endswith("State file: ods-state/ods-reconciler.state.json\n")
    assert sent_jobs(simulator) == [("publish", "da_pub001")]
    state = json.loads((tmp_path / "ods-state/ods-reconciler.state.json").read_text())
    assert list(state["datasets"]) == ["da_pub001"]

    # A re-run of the job applies the same plan again and sends nothing.
    again = run_github_step("Apply", tmp_path, simulator)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already applied" in again.stdout
    assert sent_jobs(simulator) == [("publish", "da_pub001")]


def test_github_merge_rejects_changed_manifests(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(PORTAL)
    routes = github_routes(make_reviewed_plan(tmp_path, simulator, monkeypatch))
    download = run_github_step(
        "Download the reviewed plan", tmp_path, simulator, routes=routes
    )
    assert download.returncode == 0, download.stderr

    applied = run_github_step("Apply", tmp_path, simulator, desired=MOVED_ON)
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert applied.stdout.endswith(STALE_ANNOTATION)
    assert applied.stderr == (
        "Error: reviewed-plan/plan.json: manifests/ changed since the plan was made; "
        "make a new plan\n"
    )
    assert sent_jobs(simulator) == []


def test_github_merge_rejects_moved_dataset(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal = [*PORTAL, SimulatedDataset("da_lib003", "libraries", published=False)]
    desired = [*DESIRED, ("da_lib003", "published")]
    simulator = start_simulator(portal)
    artifact = make_reviewed_plan(tmp_path, simulator, monkeypatch, desired=desired)
    download = run_github_step(
        "Download the reviewed plan",
        tmp_path,
        simulator,
        desired=desired,
        routes=github_routes(artifact),
    )
    assert download.returncode == 0, download.stderr
    # Someone publishes da_pub001 in the portal between review and merge.
    outside = requests.put(
        f"{simulator.api_url}/datasets/da_pub001/publish",
        headers={"Authorization": f"Apikey {API_KEY}"},
        timeout=5,
    )
    assert outside.status_code == 200, outside.text
    simulator.reset_stats()

    applied = run_github_step("Apply", tmp_path, simulator, desired=desired)
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert "da_pub001: REFUSED" in applied.stdout
    assert "live state moved since the plan" in applied.stdout
    assert applied.stdout.endswith(STALE_ANNOTATION)
    # The dataset that did not move is still published.
    assert sent_jobs(simulator) == [("publish", "da_lib003")]


@pytest.mark.parametrize(
    "pulls",
    [
        [],
        [{**MERGED_PULL, "merged_at": None}],
        [{**MERGED_PULL, "merge_commit_sha": HEAD_SHA}],
    ],
    ids=["none", "open", "other-merge"],
)
def test_github_push_without_pull_request_fails(
    tmp_path: Path, start_simulator: StartSimulator, pulls: list[dict[str, Any]]
) -> None:
    simulator = start_simulator(PORTAL)
    routes = github_routes(tmp_path / "absent.json", pulls=pulls)
    result = run_github_step(
        "Download the reviewed plan", tmp_path, simulator, routes=routes
    )
    assert result.returncode == 1
    assert result.stdout == (
        f"::error title=No reviewed plan::no pull request merged {MERGE_SHA}, so no "
        "plan was reviewed for it. Change the manifests through a pull request, or "
        "have a maintainer run this workflow on main with replan_and_apply\n"
    )
    assert len(stub_calls(tmp_path)) == 1
    assert not (tmp_path / "reviewed-plan").exists()


@pytest.mark.parametrize(
    ("runs", "problem"),
    [
        (
            [],
            f"no ods-reconcile.yml run planned the head {HEAD_SHA} of pull request #17",
        ),
        (
            [{**LAST_PLAN_RUN, "conclusion": "failure"}],
            f"the last plan of pull request #17 (run {PLAN_RUN_ID}) is failure, "
            "not success",
        ),
        (
            [{**LAST_PLAN_RUN, "conclusion": ""}],
            f"the last plan of pull request #17 (run {PLAN_RUN_ID}) is unfinished, "
            "not success",
        ),
    ],
    ids=["no-run", "failed", "unfinished"],
)
def test_github_merge_needs_successful_plan(
    tmp_path: Path,
    start_simulator: StartSimulator,
    runs: list[dict[str, Any]],
    problem: str,
) -> None:
    simulator = start_simulator(PORTAL)
    routes = github_routes(tmp_path / "absent.json", runs=runs)
    result = run_github_step(
        "Download the reviewed plan", tmp_path, simulator, routes=routes
    )
    assert result.returncode == 1
    assert result.stdout == (
        f"::error title=No reviewed plan::{problem}. Push to a pull request to make "
        "a new plan, or have a maintainer run this workflow on main with "
        "replan_and_apply\n"
    )
    assert [call[1:3] for call in stub_calls(tmp_path)] == [
        ["api", f"repos/{REPOSITORY}/commits/{MERGE_SHA}/pulls"],
        ["run", "list"],
    ]


def test_github_replan_applies_manifests(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    result = run_github_step("Apply", tmp_path, simulator, expressions={REPLAN: "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(
        "::warning title=Replanned::applying a plan made now from the live portal, "
        "which nobody reviewed\nPlan for "
    )
    assert sent_jobs(simulator) == [("publish", "da_pub001")]
    assert stub_calls(tmp_path) == []


@pytest.mark.parametrize(("allowed", "code"), [("", 1), ("1", 0)], ids=["unset", "set"])
def test_github_apply_passes_allow_unpublish(
    tmp_path: Path,
    start_simulator: StartSimulator,
    monkeypatch: pytest.MonkeyPatch,
    allowed: str,
    code: int,
) -> None:
    # One unpublish out of two managed datasets is more than the 25% allowed.
    simulator = start_simulator(PORTAL)
    unpublish = [("da_pub001", "unpublished"), ("da_syn002", "unpublished")]
    artifact = make_reviewed_plan(tmp_path, simulator, monkeypatch, desired=unpublish)
    (tmp_path / "reviewed-plan").mkdir()
    artifact.rename(tmp_path / "reviewed-plan" / "plan.json")

    result = run_github_step(
        "Apply",
        tmp_path,
        simulator,
        desired=unpublish,
        expressions={ALLOW_UNPUBLISH: allowed},
    )
    assert result.returncode == code, result.stdout + result.stderr
    if allowed:
        assert sent_jobs(simulator) == [("unpublish", "da_syn002")]
    else:
        assert "run again with --allow-unpublish 1" in result.stderr
        assert sent_jobs(simulator) == []


def test_github_apply_step_reports_lock(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(PORTAL)
    artifact = make_reviewed_plan(tmp_path, simulator, monkeypatch)
    (tmp_path / "reviewed-plan").mkdir()
    artifact.rename(tmp_path / "reviewed-plan" / "plan.json")
    # Another apply, this test's process, has locked the state file.
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": "2026-11-27T09:12:44+00:00",
        "command": "apply",
    }
    (tmp_path / "ods-state").mkdir()
    lock = tmp_path / "ods-state" / "ods-reconciler.state.json.lock"
    lock.write_text(json.dumps(holder))
    simulator.reset_stats()

    result = run_github_step("Apply", tmp_path, simulator)
    assert result.returncode == 5, result.stdout + result.stderr
    assert result.stdout.endswith(
        "::error title=State file locked::ods-state/ods-reconciler.state.json "
        "is locked: the message above names the holder\n"
    )
    assert simulator.stats()["requests"] == {}


def test_github_drift_step_fails_on_drift(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    variables = github_variables(tmp_path)
    result = run_step(github_step("Check for drift"), tmp_path, simulator, **variables)
    assert result.returncode == 2, result.stderr
    assert result.stdout.endswith(
        "::error title=Drift found::the portal differs from the manifests; "
        "see the job summary\n"
    )


def test_github_drift_step_tells_error_from_drift(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    variables = {**github_variables(tmp_path), "ODS_API_KEY": WRONG_KEY}
    result = run_step(github_step("Check for drift"), tmp_path, simulator, **variables)
    assert result.returncode == 1
    assert result.stdout == (
        "::error title=Drift check failed::ods-reconcile drift exited with 1: "
        "an error, not drift\n"
    )


# --- GitLab CI jobs ----------------------------------------------------------------

API_URL = "https://gitlab.example.invalid/api/v4"
PROJECT_URL = f"{API_URL}/projects/42"
GITLAB_TOKEN = "glpat-test-token-0123"
PLAN_JOB_ID = "920"
MERGE_REQUEST = {
    "iid": 17,
    "state": "merged",
    "target_branch": "main",
    "sha": HEAD_SHA,
    "merge_commit_sha": MERGE_SHA,
    "squash_commit_sha": None,
}
PLAN_JOBS = [
    {"id": 919, "name": "validate", "status": "success"},
    {"id": int(PLAN_JOB_ID), "name": "plan", "status": "success"},
]


def gitlab_variables(**overrides: str) -> dict[str, str]:
    variables: dict[str, str] = load(GITLAB)["variables"]
    return {
        **variables,
        "CI_JOB_URL": "https://gitlab.example.invalid/jobs/1",
        "CI_API_V4_URL": API_URL,
        "CI_PROJECT_ID": "42",
        "CI_COMMIT_SHA": MERGE_SHA,
        "CI_DEFAULT_BRANCH": "main",
        "CI_PIPELINE_SOURCE": "push",
        "ODS_RECONCILER_GITLAB_TOKEN": GITLAB_TOKEN,
        **overrides,
    }


def gitlab_apply_script() -> str:
    return "\n".join(load(GITLAB)["apply"]["script"])


def gitlab_routes(
    artifact: Path,
    merge_requests: list[dict[str, Any]] | None = None,
    jobs: list[dict[str, Any]] | None = None,
    *,
    has_pipeline: bool = True,
) -> list[Route]:
    """Build the curl responses of the apply job for a merge of merge request 17."""
    pipeline = {"id": 310, "status": "success"} if has_pipeline else None
    merge_request = {**MERGE_REQUEST, "head_pipeline": pipeline}
    return [
        {
            "program": "curl",
            "match": f"{PROJECT_URL}/repository/commits/{MERGE_SHA}/merge_requests",
            "stdout": json.dumps(
                [MERGE_REQUEST] if merge_requests is None else merge_requests
            ),
        },
        {
            "program": "curl",
            "match": f"{PROJECT_URL}/merge_requests/17",
            "stdout": json.dumps(merge_request),
        },
        {
            "program": "curl",
            "match": f"{PROJECT_URL}/pipelines/310/jobs?per_page=100",
            "stdout": json.dumps(PLAN_JOBS if jobs is None else jobs),
        },
        {
            "program": "curl",
            "match": f"{PROJECT_URL}/jobs/{PLAN_JOB_ID}/artifacts/plan.json",
            "copy": str(artifact),
        },
    ]


def test_gitlab_plan_writes_note_body(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    prepare_note = load(GITLAB)["plan"]["script"][0]
    result = run_step(prepare_note, tmp_path, simulator, **gitlab_variables())
    note = (tmp_path / "note.md").read_text()
    assert result.returncode == 0, result.stderr
    assert note == (tmp_path / "plan.md").read_text()
    assert note.startswith(f"{MARKER}\n")
    assert json.loads((tmp_path / "note.json").read_text()) == {"body": note}


def test_gitlab_failed_plan_note_has_marker(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    prepare_note = load(GITLAB)["plan"]["script"][0]
    variables = gitlab_variables(ODS_API_KEY=WRONG_KEY)
    result = run_step(prepare_note, tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "note.md").read_text() == (
        f"{MARKER}\n### ods-reconcile plan failed (exit code 1)\n\n"
        "See the [job log](https://gitlab.example.invalid/jobs/1).\n\n"
    )


def test_gitlab_merge_applies_reviewed_plan(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(PORTAL)
    routes = gitlab_routes(make_reviewed_plan(tmp_path, simulator, monkeypatch))

    applied = run_step(
        gitlab_apply_script(), tmp_path, simulator, routes=routes, **gitlab_variables()
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.startswith(
        f"Applying the plan of merge request !17 made by job {PLAN_JOB_ID}.\n"
        "Applying the plan saved in reviewed-plan/plan.json"
    )
    assert sent_jobs(simulator) == [("publish", "da_pub001")]
    assert (tmp_path / "ods-state" / "ods-reconciler.state.json").is_file()

    calls = stub_calls(tmp_path)
    assert [call[-1] for call in calls] == [
        f"{PROJECT_URL}/repository/commits/{MERGE_SHA}/merge_requests",
        f"{PROJECT_URL}/merge_requests/17",
        f"{PROJECT_URL}/pipelines/310/jobs?per_page=100",
        f"{PROJECT_URL}/jobs/{PLAN_JOB_ID}/artifacts/plan.json",
    ]
    for call in calls:
        assert call[0] == "curl"
        assert "--fail" in call
        assert f"Authorization: Bearer {GITLAB_TOKEN}" in call


def test_gitlab_merge_rejects_changed_manifests(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(PORTAL)
    routes = gitlab_routes(make_reviewed_plan(tmp_path, simulator, monkeypatch))
    applied = run_step(
        gitlab_apply_script(),
        tmp_path,
        simulator,
        desired=MOVED_ON,
        routes=routes,
        **gitlab_variables(),
    )
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert applied.stdout.endswith(
        "Stale plan: the manifests on main or some datasets on the portal changed "
        "since the reviewed plan, and the log above names what apply rejected.\n"
        "Make a new plan: push to a merge request that changes the manifests, "
        "review its plan and merge it, or have a maintainer run a pipeline on main "
        "with ODS_REPLAN=1.\n"
    )
    assert sent_jobs(simulator) == []


@pytest.mark.parametrize(
    "merge_requests",
    [
        [],
        [{**MERGE_REQUEST, "target_branch": "release"}],
        [{**MERGE_REQUEST, "merge_commit_sha": HEAD_SHA}],
    ],
    ids=["none", "other-target", "other-merge"],
)
def test_gitlab_push_without_merge_request_fails(
    tmp_path: Path,
    start_simulator: StartSimulator,
    merge_requests: list[dict[str, Any]],
) -> None:
    simulator = start_simulator(PORTAL)
    routes = gitlab_routes(tmp_path / "absent.json", merge_requests=merge_requests)
    # ODS_REPLAN counts only in a pipeline run by hand, never on a push.
    variables = gitlab_variables(ODS_REPLAN="1")
    result = run_step(
        gitlab_apply_script(), tmp_path, simulator, routes=routes, **variables
    )
    assert result.returncode == 1
    assert result.stdout == (
        f"No reviewed plan: no merge request merged {MERGE_SHA}, so no plan was "
        "reviewed for it.\n"
        "Change the manifests through a merge request, or have a maintainer run a "
        "pipeline on main with ODS_REPLAN=1.\n"
    )
    assert len(stub_calls(tmp_path)) == 1
    assert sent_jobs(simulator) == []


@pytest.mark.parametrize(
    ("has_pipeline", "jobs", "status"),
    [
        (True, [{**PLAN_JOBS[1], "status": "failed"}], "failed"),
        (True, [PLAN_JOBS[0]], "missing"),
        (False, [], "missing"),
    ],
    ids=["failed", "no-plan-job", "no-pipeline"],
)
def test_gitlab_merge_needs_successful_plan(
    tmp_path: Path,
    start_simulator: StartSimulator,
    has_pipeline: bool,
    jobs: list[dict[str, Any]],
    status: str,
) -> None:
    simulator = start_simulator(PORTAL)
    routes = gitlab_routes(
        tmp_path / "absent.json", jobs=jobs, has_pipeline=has_pipeline
    )
    result = run_step(
        gitlab_apply_script(), tmp_path, simulator, routes=routes, **gitlab_variables()
    )
    assert result.returncode == 1
    assert result.stdout == (
        "No reviewed plan: the plan job of the head pipeline of merge request !17 "
        f"is {status}, not success.\n"
        "Push to a merge request to make a new plan, or have a maintainer run a "
        "pipeline on main with ODS_REPLAN=1.\n"
    )
    assert sent_jobs(simulator) == []


def test_gitlab_replan_applies_manifests(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    variables = gitlab_variables(CI_PIPELINE_SOURCE="web", ODS_REPLAN="1")
    result = run_step(gitlab_apply_script(), tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(
        "ODS_REPLAN=1: applying a plan made now from the live portal, which nobody "
        "reviewed.\nPlan for "
    )
    assert sent_jobs(simulator) == [("publish", "da_pub001")]
    assert stub_calls(tmp_path) == []


def test_gitlab_drift_job_fails_on_drift(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    drift_script = "\n".join(load(GITLAB)["drift"]["script"])
    drift = run_step(drift_script, tmp_path, simulator, **gitlab_variables())
    assert drift.returncode == 2, drift.stderr
    assert drift.stdout.endswith(
        "Drift found: the portal differs from the manifests.\n"
    )
