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
import datetime
import functools
import gc
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import yaml
from jsonschema import ValidationError
from jsonschema.protocols import Validator

from reconciler import schemas
from reconciler.errors import ManifestError

SCHEMA_NAME = "manifest.schema.json"

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# PyYAML leaves Resolver.resolve() unannotated.
_RESOLVE: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = cast(
    Any, yaml.resolver.Resolver().resolve
)
_CONSTRUCTOR = yaml.constructor.SafeConstructor()

_TAG_PREFIX = "tag:yaml.org,2002:"
_MAP_TAG = _TAG_PREFIX + "map"
_SEQ_TAG = _TAG_PREFIX + "seq"
_MERGE_TAG = _TAG_PREFIX + "merge"
# "!" is the non-specific tag, which makes a scalar a string. The "value" tag is
# what PyYAML resolves a plain "=" to.
_STRING_TAGS = frozenset({_TAG_PREFIX + "str", "!", _TAG_PREFIX + "value"})
_TYPED_TAGS: dict[str, Callable[[yaml.ScalarNode], object]] = {
    _TAG_PREFIX + "null": _CONSTRUCTOR.construct_yaml_null,
    _TAG_PREFIX + "bool": _CONSTRUCTOR.construct_yaml_bool,
    _TAG_PREFIX + "int": _CONSTRUCTOR.construct_yaml_int,
    _TAG_PREFIX + "float": _CONSTRUCTOR.construct_yaml_float,
    _TAG_PREFIX + "timestamp": _CONSTRUCTOR.construct_yaml_timestamp,
}

# Plain scalars that PyYAML reads as strings but other parsers do not: YAML 1.2
# reads 1e3 or 0o17 as numbers, and the YAML 1.1 specification lists y and n as
# booleans, which PyYAML leaves out. Numbers that PyYAML resolves itself are typed
# before this check.
_YAML12_NUMBER = re.compile(
    r"0o[0-7]+|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
)
_YAML11_SHORT_BOOLEANS = {"y": True, "Y": True, "n": False, "N": False}
# First characters of the plain scalars that YAML 1.1 may read as something else
# than a string, such as the "o" of "off" or the "~" of null.
_IMPLICIT_FIRST_CHARACTERS = frozenset(yaml.resolver.Resolver.yaml_implicit_resolvers)
_INTEGER = re.compile(r"[-+]?[0-9]+")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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

PathPart = str | int
JsonPath = tuple[PathPart, ...]


@dataclass(frozen=True, slots=True)
class DatasetEntry:
    """One dataset of the manifest and the publication state it must have."""

    uid: str
    state: str
    dataset_id: str | None
    description: str | None
    path: str
    line: int


@dataclass(frozen=True)
class Manifest:
    """The datasets of one or more manifest files, checked and merged."""

    domain: str | None
    datasets: tuple[DatasetEntry, ...]
    paths: tuple[str, ...]
    # "sha256:" and the hex SHA-256 of the files' own SHA-256 digests, in order. It
    # changes with any byte of any file and with their order, but not with names.
    digest: str


class _Mark(Protocol):
    line: int
    column: int


class _Problem(NamedTuple):
    path: str
    line: int
    column: int
    where: str
    message: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}:{self.column}: {self.where}: {self.message}"


class _Mapping(dict[str, object]):
    """A YAML mapping as a dict, with the position of each key and value."""

    __slots__ = ("positions",)

    def __init__(self) -> None:
        super().__init__()
        # Four numbers per key, in key order: key line and column, value line and
        # column.
        self.positions: list[int] = []

    def key_position(self, key: str) -> tuple[int, int]:
        offset = 4 * list(self).index(key)
        return self.positions[offset], self.positions[offset + 1]

    def value_position(self, key: str) -> tuple[int, int]:
        offset = 4 * list(self).index(key)
        return self.positions[offset + 2], self.positions[offset + 3]


class _Sequence(list[object]):
    """A YAML sequence as a list, with the position of each item."""

    __slots__ = ("positions",)

    def __init__(self) -> None:
        super().__init__()
        # Two numbers per item: line and column.
        self.positions: list[int] = []

    def item_position(self, index: int) -> tuple[int, int]:
        return self.positions[2 * index], self.positions[2 * index + 1]


class _Frame:
    """A mapping or sequence whose end event has not been read yet."""

    __slots__ = (
        "column",
        "container",
        "is_key",
        "is_mapping",
        "key",
        "key_column",
        "key_line",
        "line",
        "rejected",
        "skip_value",
    )

    def __init__(self, container: _Mapping | _Sequence, line: int, column: int):
        self.container = container
        self.is_mapping = isinstance(container, _Mapping)
        self.line = line
        self.column = column
        # In a mapping, the key whose value comes next, or None while a key is
        # expected.
        self.key: str | None = None
        self.key_line = 0
        self.key_column = 0
        self.skip_value = False
        self.is_key = False
        self.rejected = False


class _ManifestFile:
    """The values of one manifest file, their positions, and the problems found."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.digest = b""
        self.root: object = None
        self.root_position = (1, 1)
        self.is_empty = True
        self.problems: list[_Problem] = []
        # Paths whose value was replaced by None after a problem was reported there.
        self.rejected: set[JsonPath] = set()
        # Source text of the plain scalars that YAML read as something else than a
        # string, such as `off` or `0123`.
        self.typed_scalars: dict[JsonPath, str] = {}
        # Plain strings that other YAML parsers read as numbers or booleans, with
        # their positions.
        self.ambiguous_scalars: list[tuple[JsonPath, int, int, str]] = []
        self._stack: list[_Frame] = []

    def add_problem(
        self, parts: JsonPath, line: int, column: int, message: str
    ) -> None:
        where = format_json_path(parts)
        self.problems.append(_Problem(self.path, line, column, where, message))

    def locate(self, parts: JsonPath) -> tuple[int, int]:
        """Return the line and column of the value at `parts`."""
        position = self.root_position
        value = self.root
        for part in parts:
            if isinstance(value, _Mapping) and isinstance(part, str):
                position = value.value_position(part)
            elif isinstance(value, _Sequence) and isinstance(part, int):
                position = value.item_position(part)
            value = cast(Any, value)[part]
        return position

    def value_at(self, parts: JsonPath) -> object:
        value = self.root
        for part in parts:
            value = cast(Any, value)[part]
        return value

    def is_rejected(self, parts: JsonPath) -> bool:
        if not self.rejected:
            return False
        return any(parts[:length] in self.rejected for length in range(len(parts) + 1))

    def parse(self, data: bytes) -> None:
        """Build the values from the YAML events of `data`."""
        loader = _LOADER(data)
        try:
            self._read_events(iter(loader.get_event, None))
        finally:
            loader.dispose()

    def _read_events(self, events: Iterator[yaml.Event]) -> None:
        documents = 0
        for event in events:
            if isinstance(event, yaml.ScalarEvent):
                self._read_scalar(event)
            elif isinstance(event, yaml.MappingStartEvent):
                self._start_collection(event, _Mapping(), _MAP_TAG)
            elif isinstance(event, yaml.SequenceStartEvent):
                self._start_collection(event, _Sequence(), _SEQ_TAG)
            elif isinstance(event, yaml.CollectionEndEvent):
                self._end_collection()
            elif isinstance(event, yaml.AliasEvent):
                self._read_alias(event)
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    line, column = _mark_position(event.start_mark)
                    message = "a manifest must contain one YAML document, found more"
                    self.add_problem((), line, column, message)
                    return

    def _next_path(self) -> JsonPath:
        """Return the path of the value that the next event starts."""
        parts: list[PathPart] = []
        for frame in self._stack:
            if isinstance(frame.container, _Sequence):
                parts.append(len(frame.container))
            elif frame.key is not None:
                parts.append(frame.key)
        return tuple(parts)

    def _expects_key(self) -> bool:
        if not self._stack:
            return False
        frame = self._stack[-1]
        return frame.is_mapping and frame.key is None

    def _add_value(self, value: object, line: int, column: int) -> None:
        if not self._stack:
            self.root = value
            self.root_position = (line, column)
            self.is_empty = False
            return

        frame = self._stack[-1]
        container = frame.container
        if isinstance(container, _Sequence):
            container.append(value)
            container.positions += (line, column)
            return
        if not frame.skip_value and frame.key is not None:
            container[frame.key] = value
            container.positions += (frame.key_line, frame.key_column, line, column)
        frame.key = None
        frame.skip_value = False

    def _read_scalar(self, event: yaml.ScalarEvent) -> None:
        mark = event.start_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        stack = self._stack
        if stack and stack[-1].is_mapping and stack[-1].key is None:
            self._read_key(event, line, column)
        elif not stack and event.value == "" and not event.style:
            # An empty document, such as a lone "---", counts as an empty file.
            return
        else:
            self._add_value(self._scalar_value(event, line, column), line, column)

    def _scalar_value(self, event: yaml.ScalarEvent, line: int, column: int) -> object:
        text = event.value
        tag = event.tag
        if tag is None:
            # Quoted and block scalars are strings, and so are plain ones that no
            # implicit resolver applies to, which is the case for most values.
            if event.style or text[:1] not in _IMPLICIT_FIRST_CHARACTERS:
                return text
            tag = _resolve_scalar_tag(text, event.implicit)
        if tag in _STRING_TAGS or tag == _MERGE_TAG:
            if event.tag is None and _is_ambiguous(text):
                self.ambiguous_scalars.append((self._next_path(), line, column, text))
            return text
        return self._typed_scalar_value(event, tag, line, column)

    def _typed_scalar_value(
        self, event: yaml.ScalarEvent, tag: str, line: int, column: int
    ) -> object:
        convert = _TYPED_TAGS.get(tag)
        if convert is None:
            path = self._next_path()
            self.add_problem(path, line, column, _unsupported_tag_message(tag))
            self.rejected.add(path)
            return None
        try:
            value = convert(yaml.ScalarNode(tag, event.value))
        except (ValueError, yaml.YAMLError):
            path = self._next_path()
            message = _invalid_scalar_message(event.value, tag, event.tag is None)
            self.add_problem(path, line, column, message)
            self.rejected.add(path)
            return None
        if event.tag is None:
            self.typed_scalars[self._next_path()] = event.value
        return value

    def _read_key(self, event: yaml.ScalarEvent, line: int, column: int) -> None:
        frame = self._stack[-1]
        container = cast(_Mapping, frame.container)
        key = event.value
        # The key is used as written: `on:` or `1:` is an unknown key, not a boolean
        # or an integer. Only a plain `<<` has a meaning of its own.
        tag = event.tag
        if tag is None and key == "<<" and not event.style:
            tag = _MERGE_TAG

        message = None
        if tag == _MERGE_TAG:
            message = "merge keys (<<) are not supported: write the keys out in full"
        elif tag is not None and tag not in _STRING_TAGS and tag not in _TYPED_TAGS:
            message = _unsupported_tag_message(tag)
        elif key in container:
            first_line = container.key_position(key)[0]
            message = f"duplicate key {key!r}, first defined at line {first_line}"
        if message is not None:
            self.add_problem((*self._next_path(), key), line, column, message)
            frame.skip_value = True
        frame.key, frame.key_line, frame.key_column = key, line, column

    def _read_alias(self, event: yaml.AliasEvent) -> None:
        line, column = _mark_position(event.start_mark)
        message = f"alias *{event.anchor} is not supported: write the value out in full"
        if self._expects_key():
            frame = self._stack[-1]
            frame.key, frame.skip_value = f"*{event.anchor}", True
            self.add_problem(self._next_path(), line, column, message)
            return

        path = self._next_path()
        self.add_problem(path, line, column, message)
        self.rejected.add(path)
        self._add_value(None, line, column)

    def _start_collection(
        self,
        event: yaml.CollectionStartEvent,
        container: _Mapping | _Sequence,
        default_tag: str,
    ) -> None:
        line, column = _mark_position(event.start_mark)
        frame = _Frame(container, line, column)
        frame.is_key = self._expects_key()
        if event.tag not in (None, "!", default_tag):
            path = self._next_path()
            self.add_problem(path, line, column, _unsupported_tag_message(event.tag))
            self.rejected.add(path)
            frame.rejected = True
        self._stack.append(frame)

    def _end_collection(self) -> None:
        frame = self._stack.pop()
        if frame.is_key:
            parent = self._stack[-1]
            kind = "a mapping" if isinstance(frame.container, _Mapping) else "a list"
            message = f"a key must be a string, found {kind}"
            self.add_problem(self._next_path(), frame.line, frame.column, message)
            parent.key, parent.skip_value = "?", True
            return
        value = None if frame.rejected else frame.container
        self._add_value(value, frame.line, frame.column)


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


def _combined_digest(files: list[_ManifestFile]) -> str:
    combined = hashlib.sha256()
    for file in files:
        combined.update(file.digest)
    return "sha256:" + combined.hexdigest()


def format_json_path(parts: JsonPath) -> str:
    """Format a path such as ("datasets", 3, "state") as $.datasets[3].state."""
    text = ["$"]
    for part in parts:
        if isinstance(part, int):
            text.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            text.append(f".{part}")
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            text.append(f"['{escaped}']")
    return "".join(text)


def _expand_paths(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[_Problem]]:
    files: list[Path] = []
    seen: set[Path] = set()
    problems: list[_Problem] = []
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_dir():
            found = _folder_manifests(path)
            if not found:
                message = "folder contains no .yaml or .yml file"
                problems.append(_Problem(str(path), 0, 0, "$", message))
        elif path.exists():
            found = [path]
        else:
            message = "no such file or directory"
            problems.append(_Problem(str(path), 0, 0, "$", message))
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


def _load_file(path: Path) -> _ManifestFile:
    file = _ManifestFile(str(path))
    try:
        data = path.read_bytes()
    except OSError as error:
        file.problems.append(
            _Problem(file.path, 0, 0, "$", f"cannot read the file: {error.strerror}")
        )
        return file

    file.digest = hashlib.sha256(data).digest()
    if not _parse_file(file, data):
        return file
    if file.is_empty:
        message = "the file is empty, expected a mapping with version and datasets"
        file.add_problem((), 1, 1, message)
        return file
    file.problems += _schema_problems(file)
    file.problems += _ambiguous_scalar_problems(file)
    return file


def _parse_file(file: _ManifestFile, data: bytes) -> bool:
    """Parse `data` into `file`, and return False after a YAML syntax error."""
    try:
        file.parse(data)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = _mark_position(mark)
        file.add_problem((), line, column, f"invalid YAML: {error.problem or error}")
        return False
    except yaml.reader.ReaderError as error:
        line = data.count(b"\n", 0, error.position) + 1
        column = error.position - data.rfind(b"\n", 0, error.position)
        file.add_problem((), line, column, f"invalid YAML: {error.reason}")
        return False
    return True


def _mark_position(mark: _Mark | None) -> tuple[int, int]:
    if mark is None:
        return 1, 1
    return mark.line + 1, mark.column + 1


def _resolve_scalar_tag(text: str, implicit: tuple[bool, bool]) -> str:
    return _RESOLVE(yaml.ScalarNode, text, implicit)


def _short_tag(tag: str) -> str:
    if tag.startswith(_TAG_PREFIX):
        return "!!" + tag.removeprefix(_TAG_PREFIX)
    return tag


def _invalid_scalar_message(text: str, tag: str, implicit: bool) -> str:
    if not implicit:
        return f"{text!r} is not a valid {_short_tag(tag)} value"
    # Only timestamps fail this way, because PyYAML resolves 2025-13-45 to a date
    # and then cannot construct it.
    return (
        f"unquoted {text} is read by YAML as a date, but it is not a valid one; "
        f"write '{text}' in quotes if a string is meant"
    )


def _unsupported_tag_message(tag: str | None) -> str:
    return f"tag {_short_tag(tag or '')} is not supported: remove it"


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


def _schema_problems(file: _ManifestFile) -> list[_Problem]:
    errors = [
        (parts, error)
        for parts, error in _schema_errors(file.root)
        if not file.is_rejected(parts)
    ]
    # A value of the wrong type also fails enum, const and pattern, so only the type
    # error is reported.
    wrong_type = {parts for parts, error in errors if error.validator == "type"}
    problems: list[_Problem] = []
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
    file: _ManifestFile, parts: JsonPath, error: ValidationError
) -> list[_Problem]:
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
    return [_Problem(file.path, line, column, where, message)]


def _unknown_key_problems(
    file: _ManifestFile, parts: JsonPath, mapping: Any, schema: Any
) -> list[_Problem]:
    allowed = list(schema.get("properties", {}))
    problems = []
    for key in mapping:
        if key in allowed:
            continue
        line, column = mapping.key_position(key)
        where = format_json_path((*parts, key))
        message = f"unknown key {key!r} (allowed keys: {', '.join(allowed)})"
        problems.append(_Problem(file.path, line, column, where, message))
    return problems


def _missing_key_problems(
    file: _ManifestFile, parts: JsonPath, mapping: Any, required: Any
) -> list[_Problem]:
    line, column = file.locate(parts)
    where = format_json_path(parts)
    return [
        _Problem(file.path, line, column, where, f"missing required key {key!r}")
        for key in required
        if key not in mapping
    ]


def _type_message(
    file: _ManifestFile, parts: JsonPath, instance: object, expected: Any
) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    expected_text = " or ".join(_TYPE_NAMES.get(name, name) for name in names)
    text = file.typed_scalars.get(parts)
    if text == "":
        return f"empty value is read by YAML as null, expected {expected_text}"
    if text is not None and "string" in names:
        quoted = "'" + text.replace("'", "''") + "'"
        return (
            f"unquoted {text} is read by YAML as {_describe(instance)}; "
            f"write {quoted} in quotes if a string is meant"
        )
    return f"expected {expected_text}, found {_describe(instance)}"


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


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, datetime.datetime):
        return f"the timestamp {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _ambiguous_scalar_problems(file: _ManifestFile) -> list[_Problem]:
    reported = {problem.where for problem in file.problems}
    problems = []
    for parts, line, column, text in file.ambiguous_scalars:
        where = format_json_path(parts)
        if where in reported or file.is_rejected(parts):
            continue
        message = (
            f"unquoted {text} is read by {_other_parsers_reading(text)}; "
            f"write '{text}' in quotes so that every parser reads a string"
        )
        problems.append(_Problem(file.path, line, column, where, message))
    return problems


def _is_ambiguous(text: str) -> bool:
    return text in _YAML11_SHORT_BOOLEANS or bool(_YAML12_NUMBER.fullmatch(text))


def _other_parsers_reading(text: str) -> str:
    if text in _YAML11_SHORT_BOOLEANS:
        value = _YAML11_SHORT_BOOLEANS[text]
        return f"some YAML 1.1 parsers as {_describe(value)}"
    return f"YAML 1.2 parsers as {_describe(_yaml12_number(text))}"


def _yaml12_number(text: str) -> int | float:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if _INTEGER.fullmatch(text):
        return int(text)
    return float(text)


def _entries_with_uid(file: _ManifestFile) -> Iterator[tuple[int, str]]:
    datasets = file.root.get("datasets") if isinstance(file.root, dict) else None
    if not isinstance(datasets, list):
        return
    for index, entry in enumerate(datasets):
        if isinstance(entry, dict) and isinstance(entry.get("uid"), str):
            yield index, entry["uid"]


def _duplicate_uid_problems(files: list[_ManifestFile]) -> list[_Problem]:
    first_declared: dict[str, tuple[_ManifestFile, int]] = {}
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
            message = (
                f"{uid} is already declared at "
                f"{first_file.path}:{first_line}:{first_column}"
            )
            problems.append(
                _Problem(file.path, line, column, format_json_path(parts), message)
            )
    return problems


def _domain_problems(files: list[_ManifestFile]) -> list[_Problem]:
    first: tuple[_ManifestFile, str] | None = None
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
        problems.append(_Problem(file.path, line, column, "$.domain", message))
    return problems


def _declares_domain(file: _ManifestFile) -> bool:
    return isinstance(file.root, dict) and "domain" in file.root


def _declared_domain(files: list[_ManifestFile]) -> str | None:
    for file in files:
        if _declares_domain(file):
            return cast(str, file.value_at(("domain",)))
    return None


def _dataset_entries(file: _ManifestFile) -> Iterator[DatasetEntry]:
    datasets = cast(_Sequence, file.value_at(("datasets",)))
    for index, entry in enumerate(cast(list[dict[str, str]], datasets)):
        yield DatasetEntry(
            uid=entry["uid"],
            state=entry["state"],
            dataset_id=entry.get("id"),
            description=entry.get("description"),
            path=file.path,
            line=datasets.item_position(index)[0],
        )
