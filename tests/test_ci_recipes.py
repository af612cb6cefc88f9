"""The CI recipes and the pre-commit hook: structure, and commands that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

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
    ("drift", "--report-unmanaged"),
}
# Words after which a shell word is in command position.
COMMAND_PREFIXES = {"!", "if", "then", "else", "elif", "do", "while", "until", "time"}


def load(path: Path) -> Any:
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
    assert handled == {0, 2, 3, 5}


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


def test_github_workflow_jobs() -> None:
    jobs = load(GITHUB)["jobs"]
    assert {name: job["if"] for name, job in jobs.items()} == {
        "plan": "github.event_name == 'pull_request'",
        "apply": "github.event_name == 'push'",
        "drift": "github.event_name == 'schedule' || "
        "github.event_name == 'workflow_dispatch'",
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
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["with"]["path"] == "plan.json"


def test_github_applies_one_at_a_time() -> None:
    apply = load(GITHUB)["jobs"]["apply"]
    assert apply["concurrency"] == {"group": "ods-apply", "cancel-in-progress": False}
    assert apply["permissions"] == {"contents": "write"}


def test_github_state_kept_on_branch() -> None:
    workflow = load(GITHUB)
    steps = {step.get("name"): step for _, step in github_steps(workflow)}
    checkout = steps["Check out the state branch"]
    commit = steps["Commit the state file"]
    assert checkout["with"] == {"ref": "ods-state", "path": "ods-state"}
    assert workflow["env"]["STATE_FILE"] == "ods-state/ods-reconciler.state.json"
    assert commit["if"] == "always() && steps.apply.outcome != 'skipped'"
    assert "git push origin HEAD:ods-state" in commit["run"]


# --- GitLab CI ---------------------------------------------------------------------


def test_gitlab_jobs_and_rules() -> None:
    jobs = gitlab_jobs(load(GITLAB))
    conditions = {
        name: [rule["if"] for rule in job["rules"]] for name, job in jobs.items()
    }
    assert conditions == {
        "validate": [
            '$CI_PIPELINE_SOURCE == "merge_request_event"',
            '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH',
        ],
        "plan": ['$CI_PIPELINE_SOURCE == "merge_request_event"'],
        "apply": [
            '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH'
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
WRONG_KEY = "wrong-key-0123456789"


def run_step(
    script: str, folder: Path, simulator: Simulator, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run a recipe's shell step as the runners do, with bash -eo pipefail."""
    (folder / "manifests").mkdir(exist_ok=True)
    (folder / "ods-state").mkdir(exist_ok=True)
    write_manifest(folder / "manifests" / "portal.yaml", DESIRED, simulator.url)
    environment = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(folder),
        "ODS_API_KEY": API_KEY,
        "MANIFESTS": "manifests/",
        "STATE_FILE": "ods-state/ods-reconciler.state.json",
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


def github_step(name: str) -> str:
    steps = {step.get("name"): step for _, step in github_steps(load(GITHUB))}
    script: str = steps[name]["run"]
    return script


def github_variables(folder: Path) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(folder / "output.txt"),
        "GITHUB_STEP_SUMMARY": str(folder / "summary.md"),
    }


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


def test_github_apply_step_writes_state(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    variables = github_variables(tmp_path)
    result = run_step(github_step("Apply"), tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("State file: ods-state/ods-reconciler.state.json\n")
    state = json.loads((tmp_path / "ods-state/ods-reconciler.state.json").read_text())
    assert list(state["datasets"]) == ["da_pub001"]


def test_github_apply_step_reports_lock(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL)
    (tmp_path / "ods-state").mkdir()
    (tmp_path / "ods-state" / "ods-reconciler.state.json.lock").write_text("{}")
    variables = github_variables(tmp_path)
    result = run_step(github_step("Apply"), tmp_path, simulator, **variables)
    assert result.returncode == 5, result.stdout + result.stderr
    assert result.stdout == (
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


def gitlab_variables() -> dict[str, str]:
    variables: dict[str, str] = load(GITLAB)["variables"]
    return {**variables, "CI_JOB_URL": "https://gitlab.example.invalid/jobs/1"}


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
    variables = {**gitlab_variables(), "ODS_API_KEY": WRONG_KEY}
    result = run_step(prepare_note, tmp_path, simulator, **variables)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "note.md").read_text() == (
        f"{MARKER}\n### ods-reconcile plan failed (exit code 1)\n\n"
        "See the [job log](https://gitlab.example.invalid/jobs/1).\n\n"
    )


def test_gitlab_apply_and_drift_run(
    tmp_path: Path, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(PORTAL, step_seconds=0.01)
    pipeline = load(GITLAB)
    apply_script = "\n".join(pipeline["apply"]["script"])
    drift_script = "\n".join(pipeline["drift"]["script"])

    drift = run_step(drift_script, tmp_path, simulator, **gitlab_variables())
    assert drift.returncode == 2, drift.stderr
    assert drift.stdout.endswith(
        "Drift found: the portal differs from the manifests.\n"
    )
    applied = run_step(apply_script, tmp_path, simulator, **gitlab_variables())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (tmp_path / "ods-state" / "ods-reconciler.state.json").is_file()
