"""Load the JSON Schemas that describe the reconciler's files, and validate with them.

Patterns are checked with ECMA-262 semantics for a trailing `$`, as JSON Schema
specifies: Python's `$` also matches before a final newline, so `^da_[a-z0-9]+$`
would accept "da_1bk7x2\\n" under `re.search`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator

import reconciler

_PACKAGE_DIR = Path(reconciler.__file__).parent

# The copy inside the package serves installed wheels. The source-tree folder next to
# the package serves editable installs and checkouts.
_SCHEMA_FOLDERS = (_PACKAGE_DIR / "_schemas", _PACKAGE_DIR.parent / "schemas")

# Keywords that do not constrain an instance, so a quick check may ignore them.
_ANNOTATION_KEYWORDS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "examples"}
)

_JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "integer": lambda value: type(value) is int,
    "number": lambda value: type(value) in (int, float),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
}

QuickCheck = Callable[[object], bool]


def load_schema(name: str) -> dict[str, Any]:
    """Read the JSON Schema file `name` from the package or the source tree."""
    for folder in _SCHEMA_FOLDERS:
        path = folder / name
        if path.is_file():
            schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return schema

    searched = ", ".join(str(folder) for folder in _SCHEMA_FOLDERS)
    raise FileNotFoundError(
        f"schema {name!r} not found in {searched}: reinstall ods-reconciler"
    )


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema pattern so that a trailing `$` matches only at the end."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern_keyword(
    validator: Validator, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# jsonschema leaves extend() unannotated.
SchemaValidator: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, validators={"pattern": _pattern_keyword}
)


def compile_validator(schema: dict[str, Any]) -> Validator:
    """Check `schema` against the 2020-12 meta-schema and return its validator."""
    SchemaValidator.check_schema(schema)
    return SchemaValidator(schema)


def compile_quick_check(
    schema: Mapping[str, Any], root: Mapping[str, Any]
) -> QuickCheck:
    """Return a predicate that is true only for instances that satisfy `schema`.

    The predicate is much faster than the validator, but it understands only type,
    enum, const, pattern, required, properties, additionalProperties (false only),
    items and `$ref` to `#/$defs/<name>` inside `root`, and it ignores annotations.
    For a schema with any other keyword it is false for every instance, so a false
    result means "run the validator", never "invalid".
    """
    checks: list[QuickCheck] = []
    for keyword, argument in schema.items():
        if keyword in _ANNOTATION_KEYWORDS:
            continue
        check = _quick_keyword_check(keyword, argument, schema, root)
        if check is None:
            return _never
        checks.append(check)

    if len(checks) == 1:
        return checks[0]
    return functools.partial(_passes_all, checks=tuple(checks))


def _passes_all(instance: object, checks: tuple[QuickCheck, ...]) -> bool:
    # A plain loop, because all() over a generator expression adds a generator per
    # call, and this runs for every entry and every key of a manifest.
    for check in checks:  # noqa: SIM110
        if not check(instance):
            return False
    return True


def _never(instance: object) -> bool:
    return False


def _quick_keyword_check(
    keyword: str, argument: Any, schema: Mapping[str, Any], root: Mapping[str, Any]
) -> QuickCheck | None:
    if keyword == "type" and isinstance(argument, str) and argument in _JSON_TYPES:
        return _JSON_TYPES[argument]
    if keyword == "enum" and all(type(member) is str for member in argument):
        strings = frozenset(argument)
        return lambda value: type(value) is str and value in strings
    if keyword == "enum":
        return functools.partial(_is_member, members=tuple(argument))
    if keyword == "const":
        return functools.partial(_is_member, members=(argument,))
    if keyword == "pattern":
        regex = compile_pattern(argument)
        return lambda value: not isinstance(value, str) or bool(regex.search(value))
    if keyword == "required":
        return lambda value: (
            not isinstance(value, dict) or all(name in value for name in argument)
        )
    if keyword == "properties":
        return _quick_properties_check(argument, root)
    if keyword == "additionalProperties" and argument is False:
        allowed = frozenset(schema.get("properties", {}))
        return lambda value: not isinstance(value, dict) or allowed.issuperset(value)
    if keyword == "items":
        item_check = compile_quick_check(argument, root)
        return lambda value: (
            not isinstance(value, list) or all(item_check(item) for item in value)
        )
    if keyword == "$ref" and argument.startswith("#/$defs/"):
        target = root.get("$defs", {}).get(argument.removeprefix("#/$defs/"))
        return None if target is None else _quick_reference_check(target, root)
    return None


def _quick_reference_check(
    target: Mapping[str, Any], root: Mapping[str, Any]
) -> QuickCheck:
    # Compile on first use, so that a schema which refers to itself does not recurse
    # without end here.
    compiled: list[QuickCheck] = []

    def check(value: object) -> bool:
        if not compiled:
            compiled.append(compile_quick_check(target, root))
        return compiled[0](value)

    return check


def _is_member(value: object, members: tuple[object, ...]) -> bool:
    # Requiring the same type makes this stricter than JSON Schema, which
    # distinguishes 1 from true but not 1 from 1.0.
    return any(type(value) is type(member) and value == member for member in members)


def _quick_properties_check(
    properties: Mapping[str, Any], root: Mapping[str, Any]
) -> QuickCheck:
    checks = {name: compile_quick_check(sub, root) for name, sub in properties.items()}

    def check(value: object) -> bool:
        if not isinstance(value, dict):
            return True
        for name, item in value.items():
            item_check = checks.get(name)
            if item_check is not None and not item_check(item):
                return False
        return True

    return check
