"""Load the YAML manifests that declare which datasets must be published.

Loading is strict, because a manifest that YAML reads differently from how it looks
would publish or unpublish the wrong datasets:

- duplicate mapping keys are errors (PyYAML would keep the last one);
- an unquoted value that YAML reads as a boolean, null, number or date where a
  string is expected is an error (`state: off` is the boolean false), and so is
  one that other YAML parsers read that way (YAML 1.2 reads `1e3` as a number);
- aliases, merge keys (`<<`) and tags other than the standard ones are rejected,
  so that every entry reads on its own;
- the structure is checked against `schemas/manifest.schema.json`;
- a uid may be declared only once, and all files must name the same domain.

Every problem in every file is collected and raised as one ManifestError, sorted by
file and position, each formatted `path:line:col: $.json.path: message`.

The files are read as a stream of YAML events rather than composed into a node
tree, because every node carries two Mark objects: with PyYAML 6.0.4 and libyaml,
composing a manifest of 100,000 entries took 360 MB and 8 s of CPU time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from jsonschema import ValidationError
from jsonschema.protocols import Validator

from reconciler import schemas
from reconciler.client import is_loopback
from reconciler.errors import ManifestError
from reconciler.yaml_reader import (
    JsonPath,
    ManifestFile,
    PathPart,
    PositionedSequence,
    Problem,
    ambiguous_scalar_problems,
    describe,
    format_json_path,
    parse_file,
)

__all__ = [
    "SCHEMA_NAME",
    "DatasetEntry",
    "JsonPath",
    "Manifest",
    "PathPart",
    "format_json_path",
    "load_manifests",
    "manifest_files",
]

SCHEMA_NAME = "manifest.schema.json"

_CREDENTIALS = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/]*@")

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


@dataclass(frozen=True, slots=True)
class DatasetEntry:
    """One dataset of the manifest and the publication state it must have."""

    uid: str
    state: str
    dataset_id: str | None
    description: str | None
    path: str
    line: int
    # True or False when the entry sets `protect`, None when it does not.
    protect: bool | None = None


@dataclass(frozen=True)
class Manifest:
    """The datasets of one or more manifest files, checked and merged."""

    domain: str | None
    datasets: tuple[DatasetEntry, ...]
    paths: tuple[str, ...]
    # "sha256:" and the hex SHA-256 of the files' own SHA-256 digests, in order. It
    # changes with any byte of any file and with their order, but not with names.
    digest: str


def manifest_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """List the manifest files that `paths` name, in order, each once.

    A folder stands for the *.yaml and *.yml files directly inside it, sorted by
    name, without hidden files. A missing path, or a folder without such files, is
    a ManifestError that names every one of them.
    """
    files, problems = _expand_paths(paths)
    if problems:
        raise ManifestError([str(problem) for problem in problems])
    return files


def load_manifests(paths: Sequence[str | os.PathLike[str]]) -> Manifest:
    """Read, check and merge the manifest files and folders in `paths`.

    Raise ManifestError with every problem of every file, sorted by position.
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("load_manifests() takes a sequence of paths, not one path")
    file_paths, problems = _expand_paths(paths)
    if not file_paths and not problems:
        raise ManifestError(["no manifest file given"])

    with _cycle_collector_paused():
        files = [_load_file(path) for path in file_paths]
        problems += [problem for file in files for problem in file.problems]
        problems += _duplicate_uid_problems(files)
        problems += _domain_problems(files)
        if problems:
            problems.sort(key=lambda problem: problem[:3])
            raise ManifestError([str(problem) for problem in problems])

        return Manifest(
            domain=_declared_domain(files),
            datasets=tuple(entry for file in files for entry in _dataset_entries(file)),
            paths=tuple(file.path for file in files),
            digest=_combined_digest(files),
        )


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector, and restart it after if it was running.

    Loading 100,000 entries creates some 300,000 containers that form no cycles,
    and the collector traversed them again and again, which took 15% of the load
    time (measured with Python 3.11).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _combined_digest(files: list[ManifestFile]) -> str:
    combined = hashlib.sha256()
    for file in files:
        combined.update(file.digest)
    return "sha256:" + combined.hexdigest()


def _expand_paths(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    seen: set[Path] = set()
    problems: list[Problem] = []
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_dir():
            found = _folder_manifests(path)
            if not found:
                message = "folder contains no .yaml or .yml file"
                problems.append(Problem(str(path), 0, 0, "$", message))
        elif path.exists():
            found = [path]
        else:
            message = "no such file or directory"
            problems.append(Problem(str(path), 0, 0, "$", message))
            continue
        for file in found:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                files.append(file)
    return files, problems


def _folder_manifests(folder: Path) -> list[Path]:
    return sorted(
        child
        for child in folder.iterdir()
        if child.suffix in (".yaml", ".yml")
        and not child.name.startswith(".")
        and child.is_file()
    )


def _load_file(path: Path) -> ManifestFile:
    file = ManifestFile(str(path))
    try:
        data = path.read_bytes()
    except OSError as error:
        file.problems.append(
            Problem(file.path, 0, 0, "$", f"cannot read the file: {error.strerror}")
        )
        return file

    file.digest = hashlib.sha256(data).digest()
    if not parse_file(file, data):
        return file
    if file.is_empty:
        message = "the file is empty, expected a mapping with version and datasets"
        file.add_problem((), 1, 1, message)
        return file
    file.problems += _schema_problems(file)
    file.problems += ambiguous_scalar_problems(file)
    file.problems += _boolean_spelling_problems(file)
    file.problems += _plain_http_problems(file)
    return file


def _plain_http_problems(file: ManifestFile) -> list[Problem]:
    """Reject an http:// domain off loopback: credentials would travel in clear."""
    domain = file.value_at(("domain",)) if _declares_domain(file) else None
    if not isinstance(domain, str) or not domain.lower().startswith("http://"):
        return []
    host = urlsplit(domain).hostname or ""
    if is_loopback(host):
        return []
    line, column = file.locate(("domain",))
    message = f"{domain!r} uses http://, allowed only for loopback hosts; use https://"
    return [Problem(file.path, line, column, "$.domain", message)]


# The manifest keys whose value is a boolean.
_BOOLEAN_KEYS = frozenset({"protect"})


def _boolean_spelling_problems(file: ManifestFile) -> list[Problem]:
    """Reject yes, no, on, off and the like where a boolean is expected.

    YAML 1.1 reads them as booleans and YAML 1.2 as strings, so a reader of the
    file cannot be sure which was meant. true and false mean the same to both.
    """
    problems = []
    for parts, text in file.typed_scalars.items():
        if not parts or parts[-1] not in _BOOLEAN_KEYS:
            continue
        try:
            value = file.value_at(parts)
        except (KeyError, IndexError, TypeError):
            continue  # a key written twice: its value is reported elsewhere
        if isinstance(value, bool) and text.lower() not in ("true", "false"):
            line, column = file.locate(parts)
            message = (
                f"unquoted {text} is read as {str(value).lower()} by YAML 1.1 but as "
                f"a string by YAML 1.2; write {str(value).lower()}"
            )
            where = format_json_path(parts)
            problems.append(Problem(file.path, line, column, where, message))
    return problems


@dataclass(frozen=True)
class _SchemaCheck:
    validator: Validator
    # A predicate that is true only for entries of `datasets` that certainly satisfy
    # their schema. None when a keyword of the array schema, such as minItems,
    # depends on all its items.
    quick_entry_check: schemas.QuickCheck | None


@functools.cache
def _schema_check() -> _SchemaCheck:
    schema = schemas.load_schema(SCHEMA_NAME)
    datasets_schema = schema["properties"]["datasets"]
    per_item = set(datasets_schema) <= {"type", "items", "title", "description"}
    quick_check = None
    if per_item and "items" in datasets_schema:
        quick_check = schemas.compile_quick_check(datasets_schema["items"], schema)
    return _SchemaCheck(schemas.compile_validator(schema), quick_check)


def _schema_errors(root: object) -> Iterator[tuple[JsonPath, ValidationError]]:
    """Validate `root` and yield each error with the path of the failing value."""
    check = _schema_check()
    datasets = root.get("datasets") if isinstance(root, dict) else None
    if check.quick_entry_check is None or not isinstance(datasets, list):
        for error in check.validator.iter_errors(cast(Any, root)):
            yield tuple(error.absolute_path), error
        return

    # jsonschema takes tens of microseconds an entry, so only the entries that the
    # quick check cannot confirm as valid go through it.
    unsure = [
        i for i, entry in enumerate(datasets) if not check.quick_entry_check(entry)
    ]
    reduced = {
        **cast(dict[str, object], root),
        "datasets": [datasets[i] for i in unsure],
    }
    for error in check.validator.iter_errors(cast(Any, reduced)):
        parts: JsonPath = tuple(error.absolute_path)
        if len(parts) >= 2 and parts[0] == "datasets":
            parts = ("datasets", unsure[cast(int, parts[1])], *parts[2:])
        yield parts, error


def _schema_problems(file: ManifestFile) -> list[Problem]:
    errors = [
        (parts, error)
        for parts, error in _schema_errors(file.root)
        if not file.is_rejected(parts)
    ]
    # A value of the wrong type also fails enum, const and pattern, so only the type
    # error is reported.
    wrong_type = {parts for parts, error in errors if error.validator == "type"}
    problems: list[Problem] = []
    described: set[tuple[JsonPath, str]] = set()
    for parts, error in errors:
        validator = str(error.validator)
        if validator != "type" and parts in wrong_type:
            continue
        # jsonschema reports each missing key separately, the unknown keys together.
        if (parts, validator) in described:
            continue
        described.add((parts, validator))
        problems += _error_problems(file, parts, error)
    return problems


def _error_problems(
    file: ManifestFile, parts: JsonPath, error: ValidationError
) -> list[Problem]:
    # The validator may have seen a copy of the root with fewer datasets.
    instance = file.value_at(parts)
    expected = cast(Any, error.validator_value)
    if error.validator == "additionalProperties":
        return _unknown_key_problems(file, parts, instance, error.schema)
    if error.validator == "required":
        return _missing_key_problems(file, parts, instance, expected)

    line, column = file.locate(parts)
    where = format_json_path(parts)
    if error.validator == "type":
        message = _type_message(file, parts, instance, expected)
    elif error.validator == "enum":
        choices = ", ".join(repr(choice) for choice in expected)
        message = f"{instance!r} is not one of {choices}"
    elif error.validator == "const":
        message = f"expected {expected!r}, found {instance!r}"
    elif error.validator == "pattern":
        message = _pattern_message(parts, str(instance), expected)
    else:
        message = error.message
    return [Problem(file.path, line, column, where, message)]


def _unknown_key_problems(
    file: ManifestFile, parts: JsonPath, mapping: Any, schema: Any
) -> list[Problem]:
    allowed = list(schema.get("properties", {}))
    problems = []
    for key in mapping:
        if key in allowed:
            continue
        line, column = mapping.key_position(key)
        where = format_json_path((*parts, key))
        message = f"unknown key {key!r} (allowed keys: {', '.join(allowed)})"
        problems.append(Problem(file.path, line, column, where, message))
    return problems


def _missing_key_problems(
    file: ManifestFile, parts: JsonPath, mapping: Any, required: Any
) -> list[Problem]:
    line, column = file.locate(parts)
    where = format_json_path(parts)
    return [
        Problem(file.path, line, column, where, f"missing required key {key!r}")
        for key in required
        if key not in mapping
    ]


def _type_message(
    file: ManifestFile, parts: JsonPath, instance: object, expected: Any
) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    expected_text = " or ".join(_TYPE_NAMES.get(name, name) for name in names)
    text = file.typed_scalars.get(parts)
    if text == "":
        return f"empty value is read by YAML as null, expected {expected_text}"
    if text is not None and "string" in names:
        quoted = "'" + text.replace("'", "''") + "'"
        return (
            f"unquoted {text} is read by YAML as {describe(instance)}; "
            f"write {quoted} in quotes if a string is meant"
        )
    return f"expected {expected_text}, found {describe(instance)}"


def _pattern_message(parts: JsonPath, instance: str, pattern: str) -> str:
    name = parts[-1] if parts else None
    if name == "uid":
        return (
            f"{instance!r} is not a valid dataset_uid, expected da_ followed by "
            "lower-case letters or digits, such as da_1bk7x2"
        )
    if name == "domain" and _CREDENTIALS.match(instance):
        masked = _CREDENTIALS.sub(_mask_credentials, instance)
        return (
            f"{masked!r} contains credentials, which do not belong in the manifest: "
            "remove them and set ODS_API_KEY, or ODS_USERNAME and ODS_PASSWORD"
        )
    if name == "domain":
        return (
            f"{instance!r} is not a valid domain, expected a host name such as "
            "data.example.org or a base URL such as https://data.example.org"
        )
    return f"{instance!r} does not match {pattern!r}"


def _mask_credentials(match: re.Match[str]) -> str:
    scheme, _, _ = match.group().rpartition("://")
    return f"{scheme}://***@" if scheme else "***@"


def _entries_with_uid(file: ManifestFile) -> Iterator[tuple[int, str]]:
    datasets = file.root.get("datasets") if isinstance(file.root, dict) else None
    if not isinstance(datasets, list):
        return
    for index, entry in enumerate(datasets):
        if isinstance(entry, dict) and isinstance(entry.get("uid"), str):
            yield index, entry["uid"]


def _duplicate_uid_problems(files: list[ManifestFile]) -> list[Problem]:
    first_declared: dict[str, tuple[ManifestFile, int]] = {}
    problems = []
    for file in files:
        for index, uid in _entries_with_uid(file):
            if uid not in first_declared:
                first_declared[uid] = (file, index)
                continue
            first_file, first_index = first_declared[uid]
            first_line, first_column = first_file.locate(
                ("datasets", first_index, "uid")
            )
            parts: JsonPath = ("datasets", index, "uid")
            line, column = file.locate(parts)
            # A uid that breaks the pattern may hold a line break: keep it escaped.
            shown = uid.encode("unicode_escape").decode("ascii")
            message = (
                f"{shown} is already declared at "
                f"{first_file.path}:{first_line}:{first_column}"
            )
            problems.append(
                Problem(file.path, line, column, format_json_path(parts), message)
            )
    return problems


def _domain_problems(files: list[ManifestFile]) -> list[Problem]:
    first: tuple[ManifestFile, str] | None = None
    problems = []
    for file in files:
        domain = file.value_at(("domain",)) if _declares_domain(file) else None
        if not isinstance(domain, str) or _CREDENTIALS.match(domain):
            continue
        if first is None:
            first = (file, domain)
            continue
        first_file, first_domain = first
        if domain == first_domain:
            continue
        first_line, first_column = first_file.locate(("domain",))
        line, column = file.locate(("domain",))
        message = (
            f"{domain!r} differs from {first_domain!r} declared at "
            f"{first_file.path}:{first_line}:{first_column}"
        )
        problems.append(Problem(file.path, line, column, "$.domain", message))
    return problems


def _declares_domain(file: ManifestFile) -> bool:
    return isinstance(file.root, dict) and "domain" in file.root


def _declared_domain(files: list[ManifestFile]) -> str | None:
    for file in files:
        if _declares_domain(file):
            return cast(str, file.value_at(("domain",)))
    return None


def _dataset_entries(file: ManifestFile) -> Iterator[DatasetEntry]:
    datasets = cast(PositionedSequence, file.value_at(("datasets",)))
    for index, entry in enumerate(cast(list[dict[str, str]], datasets)):
        yield DatasetEntry(
            uid=entry["uid"],
            state=entry["state"],
            dataset_id=entry.get("id"),
            description=entry.get("description"),
            path=file.path,
            line=datasets.item_position(index)[0],
            protect=cast(bool | None, entry.get("protect")),
        )
