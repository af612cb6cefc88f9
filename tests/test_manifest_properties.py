"""Feed generated, mutated and random manifests to load_manifests.

Every input must end in a Manifest or in a ManifestError, never in another
exception. Each problem of a ManifestError must fit on one line as
`path:line:col: $.json.path: message` or `path: message`, name a line of the file,
come sorted by (path, line, column), and be the same on a second call.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import ManifestError
from reconciler.manifest import DatasetEntry, Manifest, load_manifests

# derandomize makes every run try the same examples, so CI is repeatable. Without
# an example database, a run never replays the failures of an earlier one.
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, database=None
)

# The JSON path grammar of the problems: .name for identifiers, [index] for list
# items, ['key'] with \ and ' escaped for every other key, colons included.
JSON_PATH = r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]+\]|\['(?:[^'\\]|\\.)*'\])*"

STATES = ("published", "unpublished")
UID_PATTERN = re.compile(r"da_[a-z0-9]+")

# Values that the schema accepts and that YAML 1.1 and 1.2 parsers read as
# strings without quotes.
VALID_DOMAINS = (
    "data.example.org",
    "DATA.Example.ORG",
    "localhost",
    "a",
    "x-1.example-2.org",
    "https://data.example.org",
    "http://127.0.0.1:8765",
    "https://data.example.org:8443/portal/v2",
    "https://[::1]:8443/",
    "http://localhost/a;b=c/%7Euser",
    "https://data.example.org/explore/dataset/x/",
)

# Scalar styles that keep any text a string. The emitter falls back to double
# quotes where the chosen style cannot hold the text.
QUOTED_STYLES = ('"', "'", "|", ">")

# Plain values that YAML 1.1 or 1.2 reads as something else than a string, or
# that use a YAML feature the loader rejects.
SPECIAL_VALUES = (
    "off",
    "no",
    "yes",
    "on",
    "y",
    "N",
    "0123",
    "1.10",
    "1e3",
    "0o17",
    "0x1F",
    "1_000",
    "12:30",
    "~",
    "null",
    "",
    "True",
    "2026-01-01",
    "2026-13-45",
    "2026-01-01 10:00:00+99:00",
    ".inf",
    ".NaN",
    "[]",
    "{}",
    "!!str yes",
    "!!int 1",
    "!!binary eHg=",
    "!custom x",
    "! published",
    "*anchor",
    "&anchor published",
    "<<",
    "=",
    "1" * 5000,
)

UNKNOWN_KEYS = ("uuid", "State", "ID", "extra", "<<", "on", "1", "~", "'quoted key'")

# Fragments inserted into a manifest's bytes: YAML indicators, characters the
# YAML reader rejects, and byte sequences that are not valid UTF-8.
FRAGMENTS = (
    b"\t",
    b":",
    b": ",
    b"'",
    b'"',
    b"&a ",
    b"*a",
    b"!",
    b"!!",
    b"%",
    b"%YAML 1.1\n",
    b"%TAG ! tag:yaml.org,2002:\n",
    b"#",
    b"- ",
    b"? ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"|",
    b">",
    b"<<: ",
    b"---\n",
    b"...\n",
    b"\n",
    b"\r",
    b" ",
    b"\\",
    b"@",
    b"`",
    b"\x00",
    b"\x07",
    b"\x7f",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
)

# Tokens from which random YAML-like documents are assembled.
YAML_TOKENS = (
    *FRAGMENTS,
    b"version",
    b"domain",
    b"datasets",
    b"uid",
    b"state",
    b"id",
    b"description",
    b"da_a1",
    b"published",
    b"1",
    b"  ",
    b"    ",
)


class StyledText(str):
    """A string that ManifestDumper writes in the scalar style `style`."""

    style: str | None

    def __new__(cls, text: str, style: str | None) -> StyledText:
        styled = super().__new__(cls, text)
        styled.style = style
        return styled


class ManifestDumper(yaml.SafeDumper):
    """A safe dumper that honours the style of StyledText values."""


def represent_styled_text(dumper: yaml.SafeDumper, data: StyledText) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), data.style)


ManifestDumper.add_representer(StyledText, represent_styled_text)


# Strategies


def dataset_entries(include_protect: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Generate valid dataset entries as plain dicts, optional keys left out."""
    optional: dict[str, st.SearchStrategy[Any]] = {
        "id": st.text(max_size=30),
        "description": st.text(max_size=60),
    }
    if include_protect:
        optional["protect"] = st.booleans()
    return st.fixed_dictionaries(
        {
            "uid": st.from_regex(r"da_[a-z0-9]{1,10}", fullmatch=True),
            "state": st.sampled_from(STATES),
        },
        optional=optional,
    )


@st.composite
def valid_documents(draw: st.DrawFn, include_protect: bool = True) -> dict[str, Any]:
    """Generate a valid manifest as the dict that YAML must read from it."""
    document: dict[str, Any] = {"version": 1}
    if draw(st.booleans()):
        document["domain"] = draw(st.sampled_from(VALID_DOMAINS))
    entries = st.lists(
        dataset_entries(include_protect),
        max_size=30,
        unique_by=lambda entry: entry["uid"],
    )
    document["datasets"] = draw(entries)
    return document


def text_styles(text: str) -> st.SearchStrategy[str]:
    # With allow_unicode, PyYAML 6.0.4 writes NEL, LS and PS unescaped in single
    # quotes and in block scalars, where a reader takes them for line breaks.
    if set(text) & set("\x85\u2028\u2029"):
        return st.just('"')
    return st.sampled_from(QUOTED_STYLES)


@st.composite
def rendered_documents(
    draw: st.DrawFn,
    document: dict[str, Any],
    flow_styles: tuple[bool | None, ...] = (False, None, True),
) -> bytes:
    """Write `document` as YAML, with a drawn layout, key order and quoting.

    `flow_styles` are the values of PyYAML's default_flow_style to draw from.
    """
    rendered: dict[str, Any] = {}
    for key in draw(st.permutations(list(document))):
        rendered[key] = document[key]
    if "domain" in rendered:
        style = draw(st.sampled_from((None, '"', "'")))
        rendered["domain"] = StyledText(rendered["domain"], style)

    entries = []
    for entry in rendered["datasets"]:
        rendered_entry = {}
        for key in draw(st.permutations(list(entry))):
            value = entry[key]
            if key in ("id", "description"):
                value = StyledText(value, draw(text_styles(value)))
            rendered_entry[key] = value
        entries.append(rendered_entry)
    rendered["datasets"] = entries

    text = yaml.dump(
        rendered,
        Dumper=ManifestDumper,
        sort_keys=False,
        default_flow_style=draw(st.sampled_from(flow_styles)),
        allow_unicode=draw(st.booleans()),
        indent=draw(st.integers(min_value=2, max_value=6)),
        width=draw(st.sampled_from((20, 80, 1000))),
        explicit_start=draw(st.booleans()),
    )
    return text.encode("utf-8")


@st.composite
def valid_manifest_files(draw: st.DrawFn) -> list[tuple[dict[str, Any], bytes]]:
    """Split a valid manifest over one to three files, and write each as YAML.

    Each file declares the domain or leaves it out. The uids stay unique across
    the files.
    """
    document = draw(valid_documents())
    entries = document["datasets"]
    file_count = draw(st.integers(min_value=1, max_value=3))
    cuts = draw(
        st.lists(
            st.integers(min_value=0, max_value=len(entries)),
            min_size=file_count - 1,
            max_size=file_count - 1,
        )
    )
    bounds = [0, *sorted(cuts), len(entries)]

    files = []
    for start, end in itertools.pairwise(bounds):
        part: dict[str, Any] = {"version": 1, "datasets": entries[start:end]}
        if "domain" in document and draw(st.booleans()):
            part["domain"] = document["domain"]
        files.append((part, draw(rendered_documents(part))))
    return files


def pick_line(draw: st.DrawFn, lines: list[bytes]) -> int:
    return draw(st.integers(min_value=0, max_value=len(lines) - 1))


def delete_line(draw: st.DrawFn, lines: list[bytes]) -> None:
    del lines[pick_line(draw, lines)]


def duplicate_line(draw: st.DrawFn, lines: list[bytes]) -> None:
    index = pick_line(draw, lines)
    lines.insert(index, lines[index])


def swap_lines(draw: st.DrawFn, lines: list[bytes]) -> None:
    first, second = pick_line(draw, lines), pick_line(draw, lines)
    lines[first], lines[second] = lines[second], lines[first]


def insert_fragments(draw: st.DrawFn, lines: list[bytes]) -> None:
    index = pick_line(draw, lines)
    line = lines[index]
    offset = draw(st.integers(min_value=0, max_value=len(line)))
    fragment = st.sampled_from(FRAGMENTS) | st.binary(min_size=1, max_size=3)
    inserted = b"".join(draw(st.lists(fragment, min_size=1, max_size=4)))
    lines[index] = line[:offset] + inserted + line[offset:]


# A block-style line that starts a key, such as "  - uid: da_a1" or "version: 1".
KEY_LINE = re.compile(rb"(?P<indent> *(?:- +)?)(?P<key>[A-Za-z_]+):(?= |\n|$)")


def key_line_at(
    draw: st.DrawFn, lines: list[bytes]
) -> tuple[int, re.Match[bytes]] | None:
    index = pick_line(draw, lines)
    match = KEY_LINE.match(lines[index])
    return None if match is None else (index, match)


def sibling_indent(match: re.Match[bytes]) -> bytes:
    # The keys after "  - uid:" belong to the same mapping when written below "uid".
    return b" " * len(match["indent"])


def replace_value(draw: st.DrawFn, lines: list[bytes]) -> None:
    found = key_line_at(draw, lines)
    if found is None:
        return
    index, match = found
    value = draw(st.sampled_from(SPECIAL_VALUES)).encode()
    lines[index] = match.group() + b" " + value + b"\n"


def duplicate_key(draw: st.DrawFn, lines: list[bytes]) -> None:
    found = key_line_at(draw, lines)
    if found is None:
        return
    index, match = found
    value = draw(st.sampled_from((*STATES, *SPECIAL_VALUES))).encode()
    lines.insert(
        index + 1, sibling_indent(match) + match["key"] + b": " + value + b"\n"
    )


def quoted_keys() -> st.SearchStrategy[str]:
    """Generate double-quoted keys of arbitrary text."""
    characters = st.characters(codec="utf-8")
    return st.text(characters, max_size=12).map(
        lambda key: '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


def add_unknown_key(draw: st.DrawFn, lines: list[bytes]) -> None:
    found = key_line_at(draw, lines)
    if found is None:
        return
    index, match = found
    key = draw(st.sampled_from(UNKNOWN_KEYS) | quoted_keys()).encode()
    lines.insert(index + 1, sibling_indent(match) + key + b": x\n")


MUTATIONS: tuple[Callable[[st.DrawFn, list[bytes]], None], ...] = (
    delete_line,
    duplicate_line,
    swap_lines,
    insert_fragments,
    replace_value,
    duplicate_key,
    add_unknown_key,
)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> bytes:
    """Write a valid manifest as YAML, then change its bytes one to six times."""
    document = draw(valid_documents(include_protect=True))
    # Block style puts one key on a line, where the line mutations find it.
    data = draw(rendered_documents(document, flow_styles=(False,)))
    lines = data.splitlines(keepends=True)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not lines:
            lines.append(b"")
        mutate = draw(st.sampled_from(MUTATIONS))
        mutate(draw, lines)
    return b"".join(lines)


def random_inputs() -> st.SearchStrategy[bytes]:
    """Generate random bytes, random text, and random strings of YAML tokens."""
    tokens = st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map(b"".join)
    text = st.text(max_size=300).map(lambda text: text.encode("utf-8"))
    return st.binary(max_size=600) | text | tokens


# Checks


def write_files(factory: pytest.TempPathFactory, contents: list[bytes]) -> list[str]:
    """Write each content to a file in a new folder, and return the paths."""
    folder = factory.mktemp("manifests")
    paths = []
    for index, data in enumerate(contents):
        path = folder / f"manifest-{index}.yaml"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def count_lines(data: bytes) -> int:
    """Count the lines of `data`, with every kind of line break that YAML reads."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    # str.splitlines() also splits at \v, \f and a few others, which is harmless
    # for an upper bound. The last line may be the empty one after a final break.
    return len(text.splitlines()) + 1


def problem_position(problem: str, files: dict[str, bytes]) -> tuple[str, int, int]:
    """Check the format of `problem`, and return its path, line and column."""
    assert problem.splitlines() == [problem], f"problem spans lines: {problem!r}"
    for path, data in files.items():
        positioned = re.fullmatch(
            re.escape(path) + r":(\d+):(\d+): " + JSON_PATH + r": .+", problem
        )
        if positioned is not None:
            line, column = int(positioned[1]), int(positioned[2])
            assert 1 <= line <= count_lines(data), f"line past the end: {problem!r}"
            assert column >= 1, f"column before the line: {problem!r}"
            return path, line, column
        if re.fullmatch(re.escape(path) + r": .+", problem):
            return path, 0, 0
    raise AssertionError(f"problem in an unknown format: {problem!r}")


def load_and_check(paths: list[str], contents: list[bytes]) -> Manifest | None:
    """Load `paths`, check the problems of a ManifestError, and return the result.

    Return None after a ManifestError. Any other exception propagates.
    """
    try:
        return load_manifests(paths)
    except ManifestError as error:
        problems = error.problems

    files = dict(zip(paths, contents, strict=True))
    positions = [problem_position(problem, files) for problem in problems]
    assert problems, "ManifestError without problems"
    assert positions == sorted(positions), "problems not sorted by position"
    with pytest.raises(ManifestError) as second:
        load_manifests(paths)
    assert second.value.problems == problems, "problems differ between calls"
    return None


def document_of(manifest: Manifest) -> dict[str, Any]:
    """Rebuild the dict that YAML reads from a manifest of one file."""
    datasets = []
    for entry in manifest.datasets:
        item: dict[str, Any] = {"uid": entry.uid, "state": entry.state}
        if entry.dataset_id is not None:
            item["id"] = entry.dataset_id
        if entry.description is not None:
            item["description"] = entry.description
        if entry.protect is not None:
            item["protect"] = entry.protect
        datasets.append(item)

    document: dict[str, Any] = {"version": 1, "datasets": datasets}
    if manifest.domain is not None:
        document["domain"] = manifest.domain
    return document


def check_accepted(manifest: Manifest, data: bytes) -> None:
    """Check that an accepted file is valid, and that PyYAML reads the same."""
    assert manifest.domain is None or isinstance(manifest.domain, str)
    for entry in manifest.datasets:
        assert UID_PATTERN.fullmatch(entry.uid), entry
        assert entry.state in STATES, entry
        assert entry.dataset_id is None or isinstance(entry.dataset_id, str), entry
        assert entry.description is None or isinstance(entry.description, str), entry
        assert entry.protect is None or isinstance(entry.protect, bool), entry

    # PyYAML's safe loader raises on a few values that the loader reads as strings,
    # such as those with the non-specific tag "!", so there is nothing to compare.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        read = yaml.load(data, Loader=loader)
    except yaml.YAMLError:
        return
    assert read == document_of(manifest)


def entry_lines(data: bytes) -> list[int]:
    """Return the line of each item of `datasets`, from PyYAML's composer."""
    root = yaml.compose(data, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    for key, value in root.value:
        if key.value == "datasets":
            return [item.start_mark.line + 1 for item in value.value]
    raise AssertionError("the YAML text has no datasets key")


def expected_entries(
    document: dict[str, Any], data: bytes, path: str
) -> list[DatasetEntry]:
    entries = document["datasets"]
    lines = entry_lines(data)
    assert len(lines) == len(entries)
    return [
        DatasetEntry(
            uid=entry["uid"],
            state=entry["state"],
            dataset_id=entry.get("id"),
            description=entry.get("description"),
            protect=entry.get("protect"),
            path=path,
            line=line,
        )
        for entry, line in zip(entries, lines, strict=True)
    ]


# Properties


@PROPERTY_SETTINGS
@given(files=valid_manifest_files())
def test_load_manifests_accepts_generated_manifests(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[tuple[dict[str, Any], bytes]],
) -> None:
    contents = [data for _, data in files]
    paths = write_files(tmp_path_factory, contents)

    loaded = load_and_check(paths, contents)

    assert loaded is not None, "a generated valid manifest was rejected"
    expected = [
        entry
        for (document, data), path in zip(files, paths, strict=True)
        for entry in expected_entries(document, data, path)
    ]
    assert list(loaded.datasets) == expected
    declared = [document["domain"] for document, _ in files if "domain" in document]
    assert loaded.domain == (declared[0] if declared else None)
    assert loaded.paths == tuple(paths)


@PROPERTY_SETTINGS
@given(data=mutated_manifests())
def test_load_manifests_ends_cleanly_on_mutations(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    paths = write_files(tmp_path_factory, [data])

    loaded = load_and_check(paths, [data])

    if loaded is not None:
        check_accepted(loaded, data)


@PROPERTY_SETTINGS
@given(data=random_inputs())
def test_load_manifests_ends_cleanly_on_random_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    paths = write_files(tmp_path_factory, [data])

    loaded = load_and_check(paths, [data])

    if loaded is not None:
        check_accepted(loaded, data)


# Known bugs, each shown with the smallest input found. Each test fails until the
# loader is fixed. Then strict=True reports the pass as a failure, so that the
# xfail mark is removed.


def problems_of(path: str) -> list[str]:
    with pytest.raises(ManifestError) as raised:
        load_manifests([path])
    return raised.value.problems


def test_load_manifests_rejects_deeply_nested_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("deep.yaml").write_bytes(b"[" * 999 + b"]" * 999)

    assert problems_of("deep.yaml")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'version: 1\ndatasets: []\n"a\\nb": 1\n', id="unknown-key"),
        pytest.param(
            b"version: 1\ndatasets:\n"
            b'- {uid: "a\\nb", state: published}\n'
            b'- {uid: "a\\nb", state: published}\n',
            id="duplicate-uid",
        ),
    ],
)
def test_load_manifests_keeps_problem_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("break.yaml").write_bytes(data)

    for problem in problems_of("break.yaml"):
        assert problem.splitlines() == [problem]


@pytest.mark.xfail(
    strict=True,
    reason="the value of a duplicate key overwrites the source text recorded for "
    "the first value, so the message quotes 0123 for the 5",
)
def test_load_manifests_quotes_first_duplicate_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("twice.yaml").write_text(
        "version: 1\ndatasets:\n  - uid: da_a1\n    state: published\n"
        "    id: 5\n    id: 0123\n"
    )

    assert problems_of("twice.yaml")[0] == (
        "twice.yaml:5:9: $.datasets[0].id: unquoted 5 is read by YAML as the "
        "integer 5; write '5' in quotes if a string is meant"
    )


@pytest.mark.xfail(
    strict=True,
    reason="a rejected value of a duplicate key marks the first value's path as "
    "rejected, which hides the first value's own problem",
)
def test_load_manifests_checks_first_duplicate_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("twice.yaml").write_text(
        "version: 1\ndatasets:\n  - uid: da_a1\n    state: publishd\n"
        "    state: !!binary eHg=\n"
    )

    assert (
        "twice.yaml:4:12: $.datasets[0].state: 'publishd' is not one of "
        "'published', 'unpublished'"
    ) in problems_of("twice.yaml")


@pytest.mark.xfail(
    strict=True,
    reason="the position of a YAML reader error is a byte offset with libyaml and "
    "a character offset with the pure-Python reader, and both are read as bytes",
)
def test_load_manifests_locates_reader_error_in_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("same-line.yaml").write_bytes("\u00e9\x00".encode())
    Path("next-line.yaml").write_bytes("\u00e9\n\x00".encode())

    # libyaml fails the first check, the pure-Python reader the second.
    assert problems_of("same-line.yaml")[0].startswith("same-line.yaml:1:2: ")
    assert problems_of("next-line.yaml")[0].startswith("next-line.yaml:2:1: ")


def test_load_manifests_rejects_protect_under_duplicate_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("twice.yaml").write_text(
        "version: 1\ndatasets:\n"
        "datasets: [{uid: da_a1, state: published, protect: true}]\n"
    )

    assert problems_of("twice.yaml")
