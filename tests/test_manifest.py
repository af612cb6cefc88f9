from __future__ import annotations

import gc
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from reconciler import schemas, yaml_reader
from reconciler.errors import ManifestError
from reconciler.manifest import DatasetEntry, load_manifests, manifest_files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

ENTRY_HEADER = """\
version: 1
datasets:
  - uid: da_a1
    state: published
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in tmp_path, so that messages show short relative paths."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(name: str, text: str) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def problems_of(*paths: str) -> list[str]:
    with pytest.raises(ManifestError) as raised:
        load_manifests(list(paths))
    return raised.value.problems


def manifest_schema() -> dict[str, Any]:
    return schemas.load_schema("manifest.schema.json")


def walk_properties(schema: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Yield every subschema under `properties`, with a readable location."""
    if isinstance(schema, dict):
        for name, subschema in schema.get("properties", {}).items():
            yield f"{where}.{name}", subschema
        for key, value in schema.items():
            yield from walk_properties(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from walk_properties(value, f"{where}[{index}]")


# Loading valid manifests


def test_load_manifests_returns_entries_in_file_order(workdir: Path) -> None:
    write(
        "datasets.yaml",
        """\
        version: 1
        domain: data.example.org
        datasets:
          - uid: da_1bk7x2
            state: published
            id: bike-counters
            description: Hourly counts.

          - uid: da_2trf9q
            state: unpublished
        """,
    )

    loaded = load_manifests(["datasets.yaml"])

    assert loaded.domain == "data.example.org"
    assert loaded.paths == ("datasets.yaml",)
    assert loaded.datasets == (
        DatasetEntry(
            uid="da_1bk7x2",
            state="published",
            dataset_id="bike-counters",
            description="Hourly counts.",
            path="datasets.yaml",
            line=4,
        ),
        DatasetEntry(
            uid="da_2trf9q",
            state="unpublished",
            dataset_id=None,
            description=None,
            path="datasets.yaml",
            line=9,
        ),
    )


def test_load_manifests_merges_files_in_given_order(workdir: Path) -> None:
    write("b.yaml", ENTRY_HEADER)
    write("a.yaml", "version: 1\ndatasets:\n  - {uid: da_b2, state: unpublished}\n")

    loaded = load_manifests(["b.yaml", "a.yaml"])

    assert [entry.uid for entry in loaded.datasets] == ["da_a1", "da_b2"]
    assert loaded.paths == ("b.yaml", "a.yaml")
    assert loaded.domain is None


def test_load_manifests_accepts_empty_dataset_list(workdir: Path) -> None:
    write("empty-list.yaml", "version: 1\ndatasets: []\n")

    assert load_manifests(["empty-list.yaml"]).datasets == ()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        pytest.param("'off'", "off", id="single-quoted"),
        pytest.param('"0123"', "0123", id="double-quoted"),
        pytest.param("!!str yes", "yes", id="str-tag"),
        pytest.param("'100001'", "100001", id="digits"),
        pytest.param("bike-counters", "bike-counters", id="plain-slug"),
        pytest.param("'1e3'", "1e3", id="quoted-exponent"),
    ],
)
def test_load_manifests_keeps_quoted_strings(
    workdir: Path, written: str, expected: str
) -> None:
    write("quoted.yaml", ENTRY_HEADER + f"    id: {written}\n")

    assert load_manifests(["quoted.yaml"]).datasets[0].dataset_id == expected


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("data.example.org", id="host"),
        pytest.param("localhost", id="single-label"),
        pytest.param("https://data.example.org", id="https"),
        pytest.param("http://127.0.0.1:8080", id="http-port"),
        pytest.param("https://portal.example.org/opendata/", id="prefix"),
    ],
)
def test_load_manifests_accepts_domain_forms(workdir: Path, domain: str) -> None:
    write("domain.yaml", f"version: 1\ndomain: {domain}\ndatasets: []\n")

    assert load_manifests(["domain.yaml"]).domain == domain


def test_load_manifests_loads_the_example() -> None:
    path = EXAMPLES / "manifest.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()

    loaded = load_manifests([path])

    assert loaded.domain == "data.riverton.example.org"
    assert len(loaded.datasets) == 16
    for entry in loaded.datasets:
        assert lines[entry.line - 1].strip() == f"- uid: {entry.uid}"


def example_manifests() -> list[Path]:
    return sorted(
        path
        for path in EXAMPLES.rglob("*.yaml")
        if not {"ci", "simulator"} & set(path.relative_to(EXAMPLES).parts[:-1])
    )


@pytest.mark.parametrize(
    "path",
    example_manifests(),
    ids=lambda path: str(path.relative_to(EXAMPLES)),
)
def test_example_manifests_validate_against_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))

    # The plain validator, as editors use it, and the strict loader.
    assert list(Draft202012Validator(manifest_schema()).iter_errors(document)) == []
    assert load_manifests([path]).datasets


# YAML syntax and structure


def test_load_manifests_reports_yaml_syntax_error(workdir: Path) -> None:
    write("broken.yaml", "version: 1\ndatasets:\n  - uid: [da_a1\n")

    assert problems_of("broken.yaml") == [
        "broken.yaml:4:1: $: invalid YAML: did not find expected ',' or ']'"
    ]


def test_load_manifests_reports_invalid_utf8(workdir: Path) -> None:
    Path("not-utf8.yaml").write_bytes(b"version: 1\ndatasets: [\xff]\n")

    assert problems_of("not-utf8.yaml") == [
        "not-utf8.yaml:2:12: $: invalid YAML: invalid leading UTF-8 octet"
    ]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="no-bytes"),
        pytest.param("# nothing declared yet\n", id="comment-only"),
        pytest.param("---\n", id="empty-document"),
    ],
)
def test_load_manifests_rejects_empty_file(workdir: Path, text: str) -> None:
    write("empty.yaml", text)

    assert problems_of("empty.yaml") == [
        "empty.yaml:1:1: $: the file is empty, "
        "expected a mapping with version and datasets"
    ]


def test_load_manifests_rejects_top_level_list(workdir: Path) -> None:
    write("list.yaml", "- uid: da_a1\n  state: published\n")

    assert problems_of("list.yaml") == [
        "list.yaml:1:1: $: expected a mapping, found a list"
    ]


def test_load_manifests_rejects_several_documents(workdir: Path) -> None:
    write("two.yaml", "version: 1\ndatasets: []\n---\nversion: 1\n")

    assert problems_of("two.yaml") == [
        "two.yaml:3:1: $: a manifest must contain one YAML document, found more"
    ]


def test_load_manifests_rejects_duplicate_key(workdir: Path) -> None:
    write(
        "twice.yaml",
        """\
        version: 1
        datasets:
          - uid: da_a1
            state: unpublished
            id: budget
            state: published
        """,
    )

    assert problems_of("twice.yaml") == [
        "twice.yaml:6:5: $.datasets[0].state: duplicate key 'state', "
        "first defined at line 4"
    ]


def test_load_manifests_rejects_duplicate_top_level_key(workdir: Path) -> None:
    write("twice.yaml", "version: 1\ndatasets: []\ndatasets: []\n")

    assert problems_of("twice.yaml") == [
        "twice.yaml:3:1: $.datasets: duplicate key 'datasets', first defined at line 2"
    ]


def test_load_manifests_rejects_alias(workdir: Path) -> None:
    write(
        "alias.yaml",
        """\
        version: 1
        datasets:
          - uid: da_a1
            state: &live published
          - uid: da_b2
            state: *live
        """,
    )

    assert problems_of("alias.yaml") == [
        "alias.yaml:6:12: $.datasets[1].state: alias *live is not supported: "
        "write the value out in full"
    ]


def test_load_manifests_rejects_merge_key(workdir: Path) -> None:
    write(
        "merge.yaml",
        """\
        version: 1
        datasets:
          - <<: {state: published}
            uid: da_a1
        """,
    )

    assert problems_of("merge.yaml") == [
        "merge.yaml:3:5: $.datasets[0]['<<']: merge keys (<<) are not supported: "
        "write the keys out in full",
        "merge.yaml:3:5: $.datasets[0]: missing required key 'state'",
    ]


@pytest.mark.parametrize(
    ("written", "tag"),
    [
        pytest.param("!custom published", "!custom", id="local-scalar"),
        pytest.param("!!binary aGVsbG8=", "!!binary", id="binary"),
        pytest.param("!!python/name:os.system x", "!!python/name:os.system", id="py"),
        pytest.param("!!set {published}", "!!set", id="set"),
    ],
)
def test_load_manifests_rejects_unsupported_tag(
    workdir: Path, written: str, tag: str
) -> None:
    write(
        "tagged.yaml", f"version: 1\ndatasets:\n  - uid: da_a1\n    state: {written}\n"
    )

    assert problems_of("tagged.yaml") == [
        f"tagged.yaml:4:12: $.datasets[0].state: tag {tag} is not supported: remove it"
    ]


def test_load_manifests_rejects_collection_as_key(workdir: Path) -> None:
    write("key.yaml", ENTRY_HEADER + "    ? [a, b]\n    : value\n")

    assert problems_of("key.yaml") == [
        "key.yaml:5:7: $.datasets[0]: a key must be a string, found a list"
    ]


# YAML 1.1 implicit typing


@pytest.mark.parametrize(
    ("written", "read_as"),
    [
        pytest.param("off", "the boolean false", id="off"),
        pytest.param("no", "the boolean false", id="no"),
        pytest.param("yes", "the boolean true", id="yes"),
        pytest.param("on", "the boolean true", id="on"),
        pytest.param("true", "the boolean true", id="true"),
        pytest.param("~", "null", id="tilde"),
        pytest.param("null", "null", id="null"),
        pytest.param("0123", "the integer 83", id="octal"),
        pytest.param("100001", "the integer 100001", id="digits"),
        pytest.param("0x1F", "the integer 31", id="hex"),
        pytest.param("1.10", "the number 1.1", id="decimal"),
        pytest.param("12:30", "the integer 750", id="sexagesimal"),
        pytest.param(".inf", "the number inf", id="infinity"),
        pytest.param("2025-01-31", "the date 2025-01-31", id="date"),
    ],
)
def test_load_manifests_rejects_unquoted_non_string(
    workdir: Path, written: str, read_as: str
) -> None:
    write("typed.yaml", ENTRY_HEADER + f"    id: {written}\n")

    assert problems_of("typed.yaml") == [
        f"typed.yaml:5:9: $.datasets[0].id: unquoted {written} is read by YAML as "
        f"{read_as}; write '{written}' in quotes if a string is meant"
    ]


def test_load_manifests_rejects_unquoted_off_state(workdir: Path) -> None:
    write("state.yaml", "version: 1\ndatasets:\n  - uid: da_a1\n    state: off\n")

    assert problems_of("state.yaml") == [
        "state.yaml:4:12: $.datasets[0].state: unquoted off is read by YAML as the "
        "boolean false; write 'off' in quotes if a string is meant"
    ]


def test_load_manifests_rejects_empty_value(workdir: Path) -> None:
    write("state.yaml", "version: 1\ndatasets:\n  - uid: da_a1\n    state:\n")

    assert problems_of("state.yaml") == [
        "state.yaml:4:11: $.datasets[0].state: empty value is read by YAML as null, "
        "expected a string"
    ]


def test_load_manifests_rejects_invalid_implicit_date(workdir: Path) -> None:
    write("date.yaml", ENTRY_HEADER + "    id: 2025-13-45\n")

    assert problems_of("date.yaml") == [
        "date.yaml:5:9: $.datasets[0].id: unquoted 2025-13-45 is read by YAML as a "
        "date, but it is not a valid one; write '2025-13-45' in quotes if a string "
        "is meant"
    ]


@pytest.mark.parametrize(
    ("written", "read_as"),
    [
        pytest.param("1e3", "the number 1000.0", id="exponent"),
        pytest.param("1.5e3", "the number 1500.0", id="unsigned-exponent"),
        pytest.param("0o17", "the integer 15", id="octal-0o"),
        pytest.param("08", "the integer 8", id="leading-zero"),
    ],
)
def test_load_manifests_rejects_yaml12_numbers(
    workdir: Path, written: str, read_as: str
) -> None:
    write("typed.yaml", ENTRY_HEADER + f"    description: {written}\n")

    assert problems_of("typed.yaml") == [
        f"typed.yaml:5:18: $.datasets[0].description: unquoted {written} is read by "
        f"YAML 1.2 parsers as {read_as}; write '{written}' in quotes so that every "
        "parser reads a string"
    ]


@pytest.mark.parametrize(
    ("written", "read_as"),
    [
        pytest.param("y", "the boolean true", id="y"),
        pytest.param("N", "the boolean false", id="N"),
    ],
)
def test_load_manifests_rejects_yaml11_short_booleans(
    workdir: Path, written: str, read_as: str
) -> None:
    write("typed.yaml", ENTRY_HEADER + f"    id: {written}\n")

    assert problems_of("typed.yaml") == [
        f"typed.yaml:5:9: $.datasets[0].id: unquoted {written} is read by some "
        f"YAML 1.1 parsers as {read_as}; write '{written}' in quotes so that every "
        "parser reads a string"
    ]


def test_load_manifests_accepts_integer_version(workdir: Path) -> None:
    write("version.yaml", "version: 1\ndatasets: []\n")

    assert load_manifests(["version.yaml"]).datasets == ()


@pytest.mark.parametrize(
    ("written", "message"),
    [
        pytest.param("'1'", "expected an integer, found the string '1'", id="string"),
        pytest.param("2", "expected 1, found 2", id="unknown-version"),
        pytest.param("true", "expected an integer, found the boolean true", id="bool"),
    ],
)
def test_load_manifests_rejects_wrong_version(
    workdir: Path, written: str, message: str
) -> None:
    write("version.yaml", f"version: {written}\ndatasets: []\n")

    assert problems_of("version.yaml") == [f"version.yaml:1:10: $.version: {message}"]


def test_load_manifests_reports_explicit_tag_type(workdir: Path) -> None:
    write("tagged.yaml", ENTRY_HEADER + "    id: !!int 5\n")

    assert problems_of("tagged.yaml") == [
        "tagged.yaml:5:9: $.datasets[0].id: expected a string, found the integer 5"
    ]


# Schema rules


def test_load_manifests_rejects_misspelt_state(workdir: Path) -> None:
    write("state.yaml", "version: 1\ndatasets:\n  - uid: da_a1\n    state: publised\n")

    assert problems_of("state.yaml") == [
        "state.yaml:4:12: $.datasets[0].state: 'publised' is not one of "
        "'published', 'unpublished'"
    ]


def test_load_manifests_points_unknown_keys_at_key(workdir: Path) -> None:
    write(
        "unknown.yaml",
        """\
        version: 1
        api_key: abc123
        datasets:
          - uid: da_a1
            state: published
            stat: unpublished
        """,
    )

    assert problems_of("unknown.yaml") == [
        "unknown.yaml:2:1: $.api_key: unknown key 'api_key' "
        "(allowed keys: version, domain, datasets)",
        "unknown.yaml:6:5: $.datasets[0].stat: unknown key 'stat' "
        "(allowed keys: uid, state, id, description, protect)",
    ]


def test_load_manifests_reads_boolean_like_key_as_written(workdir: Path) -> None:
    write("key.yaml", ENTRY_HEADER + "    on: x\n    my key: y\n")

    assert problems_of("key.yaml") == [
        "key.yaml:5:5: $.datasets[0].on: unknown key 'on' "
        "(allowed keys: uid, state, id, description, protect)",
        "key.yaml:6:5: $.datasets[0]['my key']: unknown key 'my key' "
        "(allowed keys: uid, state, id, description, protect)",
    ]


def test_load_manifests_reports_missing_keys(workdir: Path) -> None:
    write("missing.yaml", "domain: data.example.org\ndatasets:\n  - id: budget\n")

    assert problems_of("missing.yaml") == [
        "missing.yaml:1:1: $: missing required key 'version'",
        "missing.yaml:3:5: $.datasets[0]: missing required key 'uid'",
        "missing.yaml:3:5: $.datasets[0]: missing required key 'state'",
    ]


def test_load_manifests_rejects_wrong_container_types(workdir: Path) -> None:
    write("types.yaml", "version: 1\ndatasets:\n  - da_a1\n  - uid: [da_b2]\n")

    assert problems_of("types.yaml") == [
        "types.yaml:3:5: $.datasets[0]: expected a mapping, found the string 'da_a1'",
        "types.yaml:4:5: $.datasets[1]: missing required key 'state'",
        "types.yaml:4:10: $.datasets[1].uid: expected a string, found a list",
    ]


@pytest.mark.parametrize(
    "uid",
    [
        pytest.param("DA_1BK7X2", id="upper-case"),
        pytest.param("1bk7x2", id="no-prefix"),
        pytest.param("da_", id="prefix-only"),
        pytest.param("da_1bk-7x2", id="hyphen"),
        pytest.param('"da_1bk7x2\\n"', id="trailing-newline"),
    ],
)
def test_load_manifests_rejects_invalid_uid(workdir: Path, uid: str) -> None:
    write("uid.yaml", f"version: 1\ndatasets:\n  - uid: {uid}\n    state: published\n")
    value = yaml.safe_load(uid)

    assert problems_of("uid.yaml") == [
        f"uid.yaml:3:10: $.datasets[0].uid: {value!r} is not a valid dataset_uid, "
        "expected da_ followed by lower-case letters or digits, such as da_1bk7x2"
    ]


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("data.example.org/opendata", id="path-without-scheme"),
        pytest.param("ftp://data.example.org", id="ftp"),
        pytest.param("data.example.org:8080", id="port-without-scheme"),
        pytest.param("https://data.example.org?apikey=x", id="query"),
        pytest.param("data_example.org", id="underscore"),
    ],
)
def test_load_manifests_rejects_invalid_domain(workdir: Path, domain: str) -> None:
    write("domain.yaml", f"version: 1\ndomain: {domain}\ndatasets: []\n")

    assert problems_of("domain.yaml") == [
        f"domain.yaml:2:9: $.domain: {domain!r} is not a valid domain, expected a "
        "host name such as data.example.org or a base URL such as "
        "https://data.example.org"
    ]


@pytest.mark.parametrize(
    ("domain", "masked"),
    [
        pytest.param(
            "https://ods:s3cret@data.example.org", "https://***@data.example.org"
        ),
        pytest.param("ods:s3cret@data.example.org", "***@data.example.org"),
    ],
)
def test_load_manifests_rejects_domain_credentials(
    workdir: Path, domain: str, masked: str
) -> None:
    write("domain.yaml", f"version: 1\ndomain: {domain}\ndatasets: []\n")

    problems = problems_of("domain.yaml")

    assert problems == [
        f"domain.yaml:2:9: $.domain: {masked!r} contains credentials, which do not "
        "belong in the manifest: remove them and set ODS_API_KEY, or ODS_USERNAME "
        "and ODS_PASSWORD"
    ]
    assert "s3cret" not in problems[0]


# Rules across entries and files


def test_load_manifests_rejects_duplicate_uid_in_file(workdir: Path) -> None:
    write(
        "twice.yaml",
        """\
        version: 1
        datasets:
          - uid: da_a1
            state: published
          - uid: da_a1
            state: unpublished
        """,
    )

    assert problems_of("twice.yaml") == [
        "twice.yaml:5:10: $.datasets[1].uid: da_a1 is already declared at "
        "twice.yaml:3:10"
    ]


def test_load_manifests_rejects_duplicate_uid_across_files(workdir: Path) -> None:
    write("first.yaml", ENTRY_HEADER)
    write(
        "second.yaml",
        """\
        version: 1
        datasets:
          - uid: da_b2
            state: published
          - uid: da_a1
            state: unpublished
        """,
    )

    assert problems_of("first.yaml", "second.yaml") == [
        "second.yaml:5:10: $.datasets[1].uid: da_a1 is already declared at "
        "first.yaml:3:10"
    ]


def test_load_manifests_rejects_different_domains(workdir: Path) -> None:
    write("a.yaml", "version: 1\ndomain: data.example.org\ndatasets: []\n")
    write("b.yaml", "version: 1\ndatasets: []\n")
    write("c.yaml", "version: 1\ndomain: staging.example.org\ndatasets: []\n")

    assert problems_of("a.yaml", "b.yaml", "c.yaml") == [
        "c.yaml:2:9: $.domain: 'staging.example.org' differs from "
        "'data.example.org' declared at a.yaml:2:9"
    ]


def test_load_manifests_takes_domain_from_any_file(workdir: Path) -> None:
    write("a.yaml", "version: 1\ndatasets: []\n")
    write("b.yaml", "version: 1\ndomain: data.example.org\ndatasets: []\n")
    write("c.yaml", "version: 1\ndomain: data.example.org\ndatasets: []\n")

    assert load_manifests(["a.yaml", "b.yaml", "c.yaml"]).domain == "data.example.org"


def test_load_manifests_reports_all_problems_sorted(workdir: Path) -> None:
    write(
        "many.yaml",
        """\
        version: 1
        datasets:
          - uid: da_a1
            state: published
          - uid: da_b2
            state: publised
          - uid: da_a1
            state: published
          - uid: da_c3
            state: off
        """,
    )

    assert problems_of("many.yaml") == [
        "many.yaml:6:12: $.datasets[1].state: 'publised' is not one of "
        "'published', 'unpublished'",
        "many.yaml:7:10: $.datasets[2].uid: da_a1 is already declared at "
        "many.yaml:3:10",
        "many.yaml:10:12: $.datasets[3].state: unquoted off is read by YAML as the "
        "boolean false; write 'off' in quotes if a string is meant",
    ]


def test_load_manifests_sorts_problems_by_file(workdir: Path) -> None:
    write("b.yaml", "version: 2\ndatasets: []\n")
    write("a.yaml", "version: 1\ndatasets:\n  - uid: da_a1\n    state: on\n")

    assert problems_of("b.yaml", "a.yaml", "missing.yaml") == [
        "a.yaml:4:12: $.datasets[0].state: unquoted on is read by YAML as the "
        "boolean true; write 'on' in quotes if a string is meant",
        "b.yaml:1:10: $.version: expected 1, found 2",
        "missing.yaml: no such file or directory",
    ]


def test_load_manifests_locates_problems_in_long_list(workdir: Path) -> None:
    entries = "".join(
        f"  - {{uid: da_{index}, state: published}}\n" for index in range(50)
    )
    entries = entries.replace("da_37, state: published", "da_37, state: live")
    write("long.yaml", "version: 1\ndatasets:\n" + entries)

    assert problems_of("long.yaml") == [
        "long.yaml:40:25: $.datasets[37].state: 'live' is not one of "
        "'published', 'unpublished'"
    ]


def test_load_manifests_without_libyaml_reports_same_problems(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        "many.yaml",
        """\
        version: 1
        datasets:
          - uid: da_a1
            state: off
            state: published
          - uid: da_a1
            state: &x published
            id: *x
        """,
    )
    with_libyaml = problems_of("many.yaml")

    monkeypatch.setattr(yaml_reader, "_LOADER", yaml.SafeLoader)

    assert problems_of("many.yaml") == with_libyaml
    assert len(with_libyaml) == 4


# Files and folders


def test_manifest_files_expands_folders_sorted(workdir: Path) -> None:
    for name in ["b.yml", "a.yaml", "c.yaml", ".hidden.yaml", "notes.txt"]:
        write(f"manifests/{name}", "version: 1\ndatasets: []\n")
    Path("manifests/nested.yaml").mkdir()
    write("extra.yaml", "version: 1\ndatasets: []\n")

    assert manifest_files(["extra.yaml", "manifests"]) == [
        Path("extra.yaml"),
        Path("manifests/a.yaml"),
        Path("manifests/b.yml"),
        Path("manifests/c.yaml"),
    ]


def test_manifest_files_lists_each_file_once(workdir: Path) -> None:
    write("manifests/a.yaml", "version: 1\ndatasets: []\n")

    assert manifest_files(["manifests/a.yaml", "manifests", "./manifests/a.yaml"]) == [
        Path("manifests/a.yaml")
    ]


def test_manifest_files_rejects_missing_paths(workdir: Path) -> None:
    Path("empty-folder").mkdir()

    with pytest.raises(ManifestError) as raised:
        manifest_files(["absent.yaml", "empty-folder"])

    assert raised.value.problems == [
        "absent.yaml: no such file or directory",
        "empty-folder: folder contains no .yaml or .yml file",
    ]


def test_load_manifests_reads_folder(workdir: Path) -> None:
    write(
        "manifests/2-second.yaml",
        "version: 1\ndatasets:\n  - {uid: da_b2, state: published}\n",
    )
    write("manifests/1-first.yaml", ENTRY_HEADER)

    loaded = load_manifests(["manifests"])

    assert loaded.paths == ("manifests/1-first.yaml", "manifests/2-second.yaml")
    assert [entry.uid for entry in loaded.datasets] == ["da_a1", "da_b2"]


def test_load_manifests_rejects_no_paths() -> None:
    with pytest.raises(ManifestError) as raised:
        load_manifests([])

    assert raised.value.problems == ["no manifest file given"]


def test_load_manifests_rejects_single_string() -> None:
    with pytest.raises(TypeError):
        load_manifests("manifest.yaml")


# Digest


def test_manifest_digest_changes_with_content(workdir: Path) -> None:
    write("m.yaml", ENTRY_HEADER)
    before = load_manifests(["m.yaml"]).digest
    write("m.yaml", ENTRY_HEADER.replace("published", "unpublished"))

    after = load_manifests(["m.yaml"]).digest

    assert before.startswith("sha256:")
    assert len(before) == len("sha256:") + 64
    assert after != before


def test_manifest_digest_ignores_file_names(workdir: Path) -> None:
    write("one.yaml", ENTRY_HEADER)
    write("other.yaml", ENTRY_HEADER)

    assert load_manifests(["one.yaml"]).digest == load_manifests(["other.yaml"]).digest


def test_manifest_digest_depends_on_file_order(workdir: Path) -> None:
    write("a.yaml", ENTRY_HEADER)
    write("b.yaml", "version: 1\ndatasets: []\n")

    assert (
        load_manifests(["a.yaml", "b.yaml"]).digest
        != load_manifests(["b.yaml", "a.yaml"]).digest
    )


# Schema file and helpers


def test_manifest_schema_is_valid_json_schema() -> None:
    schema = manifest_schema()

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (
        schema["$id"] == "https://ods-reconciler.invalid/schemas/manifest.schema.json"
    )
    assert schema["title"]


def test_manifest_schema_describes_every_property() -> None:
    properties = list(walk_properties(manifest_schema(), "$"))

    assert len(properties) == 8
    for where, subschema in properties:
        assert subschema.get("description"), where


def test_manifest_schema_rejects_additional_properties_everywhere() -> None:
    schema = manifest_schema()

    assert schema["additionalProperties"] is False
    assert schema["$defs"]["dataset"]["additionalProperties"] is False


def test_load_schema_prefers_package_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package_copy = tmp_path / "package"
    source_tree = tmp_path / "source"
    for folder, title in [(package_copy, "package"), (source_tree, "source")]:
        folder.mkdir()
        (folder / "x.schema.json").write_text(f'{{"title": "{title}"}}')
    (source_tree / "y.schema.json").write_text('{"title": "only in source"}')
    monkeypatch.setattr(schemas, "_SCHEMA_FOLDERS", (package_copy, source_tree))

    assert schemas.load_schema("x.schema.json") == {"title": "package"}
    assert schemas.load_schema("y.schema.json") == {"title": "only in source"}


def test_load_schema_reports_missing_schema() -> None:
    with pytest.raises(FileNotFoundError, match=r"'absent\.schema\.json' not found"):
        schemas.load_schema("absent.schema.json")


def test_compile_pattern_anchors_dollar_at_end() -> None:
    regex = schemas.compile_pattern("^da_[a-z0-9]+$")

    assert regex.search("da_1bk7x2")
    assert not regex.search("da_1bk7x2\n")


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"uid": "da_a1", "state": "published"}, id="minimal"),
        pytest.param(
            {"uid": "da_a1", "state": "unpublished", "id": "x", "description": "y"},
            id="full",
        ),
        pytest.param({"uid": "da_a1"}, id="missing-state"),
        pytest.param({"uid": "da_a1", "state": "live"}, id="bad-state"),
        pytest.param({"uid": "DA", "state": "published"}, id="bad-uid"),
        pytest.param({"uid": "da_a1\n", "state": "published"}, id="uid-newline"),
        pytest.param({"uid": "da_a1", "state": "published", "x": 1}, id="unknown"),
        pytest.param({"uid": "da_a1", "state": "published", "id": 5}, id="int-id"),
        pytest.param({"uid": "da_a1", "state": True}, id="bool-state"),
        pytest.param(["da_a1"], id="list"),
        pytest.param(None, id="null"),
    ],
)
def test_compile_quick_check_agrees_with_validator(entry: Any) -> None:
    schema = manifest_schema()
    entry_schema = schema["$defs"]["dataset"]
    quick_check = schemas.compile_quick_check(entry_schema, schema)

    assert quick_check(entry) == schemas.SchemaValidator(entry_schema).is_valid(entry)


def test_compile_quick_check_gives_up_on_unknown_keyword() -> None:
    quick_check = schemas.compile_quick_check({"type": "string", "minLength": 2}, {})

    assert quick_check("long enough") is False


def test_load_manifests_restores_cycle_collector(workdir: Path) -> None:
    write("bad.yaml", "version: 2\ndatasets: []\n")

    with pytest.raises(ManifestError):
        load_manifests(["bad.yaml"])

    assert gc.isenabled()


def test_load_manifests_names_tab_indentation(tmp_path: Path) -> None:
    path = tmp_path / "tab.yaml"
    path.write_text("version: 1\ndatasets:\n\t- uid: da_a\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    assert caught.value.problems == [
        f"{path}:3:1: $: invalid YAML: found character that cannot start any "
        "token (a tab: YAML indents with spaces only)"
    ]


def test_load_manifests_rejects_plain_http_domain(tmp_path: Path) -> None:
    path = tmp_path / "http.yaml"
    path.write_text("version: 1\ndomain: http://data.example.org\ndatasets: []\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    assert caught.value.problems == [
        f"{path}:2:9: $.domain: 'http://data.example.org' uses http://, allowed "
        "only for loopback hosts; use https://"
    ]


def test_load_manifests_accepts_loopback_http_domain(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text("version: 1\ndomain: http://127.0.0.1:8765\ndatasets: []\n")
    assert load_manifests([path]).domain == "http://127.0.0.1:8765"
