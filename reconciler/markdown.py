"""Render a plan as Markdown for a pull-request or merge-request comment."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.output import item_label, plural
from reconciler.plan import NONE, Plan, state_name

# Code hosts reject longer comments (GitHub's limit is 65,536 characters);
# the margin leaves room for what a workflow adds around the plan.
MAX_CHARS = 60_000
# Room kept for the closing note that counts the rows left out.
NOTE_RESERVE = 300
MARKER = "<!-- ods-reconciler-plan -->"


@dataclass(frozen=True)
class Table:
    """A titled Markdown table; folded tables sit in a <details> block."""

    title: str
    header: str
    rows: list[str]
    folded: bool = False

    def frame(self) -> tuple[str, str]:
        """Return the text before and after the rows."""
        if self.folded:
            opening = f"\n<details><summary>{self.title}</summary>\n\n{self.header}\n"
            return opening, "\n</details>\n"
        return f"\n#### {self.title}\n\n{self.header}\n", ""


def render_markdown(plan: Plan, *, title: str = "ods-reconcile plan") -> str:
    """Render the plan; past MAX_CHARS, rows are left out and counted."""
    head = f"{MARKER}\n### {title} for `{plan.domain}`\n\n**{plan.summary()}**\n"
    tables = [
        table
        for table in (
            changes_table(plan),
            attention_table(plan),
            warnings_table(plan),
            unchanged_table(plan),
            unmanaged_table(plan),
        )
        if table.rows
    ]
    return fit(head, tables)


def fit(head: str, tables: list[Table]) -> str:
    """Join the tables in order, dropping the rows that exceed the size budget."""
    budget = MAX_CHARS - len(head) - NOTE_RESERVE
    parts = [head]
    left_out = 0
    for table in tables:
        opening, closing = table.frame()
        budget -= len(opening) + len(closing)
        kept: list[str] = []
        for row in table.rows:
            if len(row) + 1 > budget:
                break
            kept.append(row)
            budget -= len(row) + 1
        left_out += len(table.rows) - len(kept)
        if kept:
            parts.append(opening + "".join(row + "\n" for row in kept) + closing)
    if left_out:
        parts.append(
            f"\n_{left_out:,} rows were left out to keep this comment under "
            f"{MAX_CHARS:,} characters; `ods-reconcile plan` lists them all._\n"
        )
    return "".join(parts)


def changes_table(plan: Plan) -> Table:
    """Tabulate the datasets apply will publish or unpublish."""
    rows = [
        f"| {item.kind} | `{item.uid}` | {cell(item.dataset_id)} | "
        f"{item.current} → {item.desired} | {cell(item.reason)} |"
        for item in plan.items
        if item.is_action
    ]
    header = (
        "| action | UID | dataset id | current → desired | reason |\n"
        "|---|---|---|---|---|"
    )
    return Table("Changes", header, rows)


def attention_table(plan: Plan) -> Table:
    """Tabulate busy, unhealthy, missing and unreadable datasets."""
    rows = [
        f"| {item_label(item)[2:]} | `{item.uid}` | {cell(item.dataset_id)} | "
        f"{cell(item.reason)} |"
        for item in plan.items
        if item.unhealthy or (item.kind != NONE and not item.is_action)
    ]
    header = "| | UID | dataset id | reason |\n|---|---|---|---|"
    return Table("Busy, unhealthy, missing or unreadable", header, rows)


def warnings_table(plan: Plan) -> Table:
    """Tabulate the warnings, such as a dataset id that differs from the portal's."""
    rows = [
        f"| `{item.uid}` | {cell(warning)} |"
        for item in plan.items
        for warning in item.warnings
    ]
    return Table("Warnings", "| UID | warning |\n|---|---|", rows)


def unchanged_table(plan: Plan) -> Table:
    """Tabulate the datasets already in sync, folded."""
    rows = [
        f"| `{item.uid}` | {cell(item.dataset_id)} | {item.desired} |"
        for item in plan.items
        if item.kind == NONE and not item.unhealthy
    ]
    header = "| UID | dataset id | state |\n|---|---|---|"
    title = f"{plural(len(rows), 'dataset')} in sync"
    return Table(title, header, rows, folded=True)


def unmanaged_table(plan: Plan) -> Table:
    """Tabulate the portal's datasets that no manifest declares, folded."""
    rows = [
        f"| `{dataset.uid}` | {cell(dataset.dataset_id)} | "
        f"{state_name(dataset.published)} |"
        for dataset in plan.unmanaged
    ]
    header = "| UID | dataset id | state |\n|---|---|---|"
    title = f"{plural(len(rows), 'dataset')} in no manifest (never touched)"
    return Table(title, header, rows, folded=True)


def cell(text: str | None) -> str:
    """Escape a value for a Markdown table cell."""
    if not text:
        return ""
    # Portal text is data: it must not end the row, the table, or open an HTML
    # comment that would hide the rest of a pull-request comment.
    text = " ".join(text.split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
