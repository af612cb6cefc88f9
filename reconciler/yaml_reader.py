"""Read manifest YAML events into positioned dicts and lists, checking scalar types."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, cast

import yaml

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

PathPart = str | int
JsonPath = tuple[PathPart, ...]


class _Mark(Protocol):
    line: int
    column: int


class Problem(NamedTuple):
    path: str
    line: int
    column: int
    where: str
    message: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}:{self.column}: {self.where}: {self.message}"


class PositionedMapping(dict[str, object]):
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


class PositionedSequence(list[object]):
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

    def __init__(
        self, container: PositionedMapping | PositionedSequence, line: int, column: int
    ):
        self.container = container
        self.is_mapping = isinstance(container, PositionedMapping)
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


class ManifestFile:
    """The values of one manifest file, their positions, and the problems found."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.digest = b""
        self.root: object = None
        self.root_position = (1, 1)
        self.is_empty = True
        self.problems: list[Problem] = []
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
        self.problems.append(Problem(self.path, line, column, where, message))

    def locate(self, parts: JsonPath) -> tuple[int, int]:
        """Return the line and column of the value at `parts`."""
        position = self.root_position
        value = self.root
        for part in parts:
            if isinstance(value, PositionedMapping) and isinstance(part, str):
                position = value.value_position(part)
            elif isinstance(value, PositionedSequence) and isinstance(part, int):
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
        # Most events are scalars: an exact type test and a bound method keep
        # the loop short for a manifest of 100,000 entries.
        scalar_event = yaml.ScalarEvent
        read_scalar = self._read_scalar
        for event in events:
            if type(event) is scalar_event:
                read_scalar(event)
            elif isinstance(event, yaml.MappingStartEvent):
                self._start_collection(event, PositionedMapping(), _MAP_TAG)
            elif isinstance(event, yaml.SequenceStartEvent):
                self._start_collection(event, PositionedSequence(), _SEQ_TAG)
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
            if isinstance(frame.container, PositionedSequence):
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
        if isinstance(container, PositionedSequence):
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
        container = cast(PositionedMapping, frame.container)
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
        container: PositionedMapping | PositionedSequence,
        default_tag: str,
    ) -> None:
        line, column = _mark_position(event.start_mark)
        frame = _Frame(container, line, column)
        frame.is_key = self._expects_key()
        if len(self._stack) == MAX_DEPTH:
            # Deeper values would exhaust Python's recursion limit in the schema
            # validator; no manifest needs more than a few levels.
            path = self._next_path()
            self.add_problem(
                path, line, column, f"nested deeper than {MAX_DEPTH} levels"
            )
            self.rejected.add(path)
            frame.rejected = True
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
            kind = (
                "a mapping"
                if isinstance(frame.container, PositionedMapping)
                else "a list"
            )
            message = f"a key must be a string, found {kind}"
            self.add_problem(self._next_path(), frame.line, frame.column, message)
            parent.key, parent.skip_value = "?", True
            return
        value = None if frame.rejected else frame.container
        self._add_value(value, frame.line, frame.column)


def _character_at(data: bytes, line: int, column: int) -> str:
    """Return the character at a 1-based line and column, or "" past the end."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if line > len(lines) or column > len(lines[line - 1]):
        return ""
    return lines[line - 1][column - 1]


def parse_file(file: ManifestFile, data: bytes) -> bool:
    """Parse `data` into `file`, and return False after a YAML syntax error."""
    try:
        file.parse(data)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = _mark_position(mark)
        message = f"invalid YAML: {error.problem or error}"
        if mark is not None and _character_at(data, line, column) == "\t":
            message += " (a tab: YAML indents with spaces only)"
        file.add_problem((), line, column, message)
        return False
    except yaml.reader.ReaderError as error:
        line = data.count(b"\n", 0, error.position) + 1
        column = error.position - data.rfind(b"\n", 0, error.position)
        file.add_problem((), line, column, f"invalid YAML: {error.reason}")
        return False
    return True


MAX_DEPTH = 50


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
            escaped = escaped.replace("\n", "\\n").replace("\r", "\\r")
            text.append(f"['{escaped}']")
    return "".join(text)


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


def ambiguous_scalar_problems(file: ManifestFile) -> list[Problem]:
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
        problems.append(Problem(file.path, line, column, where, message))
    return problems


def _is_ambiguous(text: str) -> bool:
    return text in _YAML11_SHORT_BOOLEANS or bool(_YAML12_NUMBER.fullmatch(text))


def _other_parsers_reading(text: str) -> str:
    if text in _YAML11_SHORT_BOOLEANS:
        value = _YAML11_SHORT_BOOLEANS[text]
        return f"some YAML 1.1 parsers as {describe(value)}"
    return f"YAML 1.2 parsers as {describe(_yaml12_number(text))}"


def _yaml12_number(text: str) -> int | float:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if _INTEGER.fullmatch(text):
        return int(text)
    return float(text)


def describe(value: object) -> str:
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
