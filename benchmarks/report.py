"""Compare the figures with their targets and render them as a Markdown table."""

from __future__ import annotations

from typing import Any

# Plan wall time at the largest size and apply wall time, as multiples of their
# latency bound. Offline validate and plan, in CPU seconds and peak megabytes.
PLAN_WALL_TARGET = 1.5
APPLY_WALL_TARGET = 1.3
OFFLINE_CPU_TARGET = 3.0
OFFLINE_RSS_TARGET = 300.0

# Table rows of a plan or an apply: label and key of each figure.
COMPARED_FIGURES = (
    ("requests", "requests"),
    ("wall s", "wall_seconds"),
    ("peak RSS MB", "peak_rss_mb"),
)
OFFLINE_FIGURES = (
    ("wall s", "wall_seconds"),
    ("CPU s", "cpu_seconds"),
    ("peak RSS MB", "peak_rss_mb"),
)
HEADER = (
    "figure",
    "ours",
    "bound",
    "ours/bound",
    "naive",
    "naive bound",
    "naive/ours",
    "target",
)


def ratio(value: float | None, reference: float | None) -> float | None:
    """Divide, or return None when either side is missing or the divisor is 0."""
    if value is None or not reference:
        return None
    return value / reference


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the figures with their targets; skip a ratio to a bound of 0."""
    targets = [
        _target(
            "plan",
            plan,
            "requests",
            plan["ours"]["requests"],
            plan["bound"]["requests"],
            "requests",
        )
        for plan in results["plan"]
    ]
    largest = max(results["plan"], key=lambda plan: plan["datasets"])
    apply = results["apply"]
    offline = results["offline"]
    cpu, rss = offline["cpu_seconds"], offline["peak_rss_mb"]
    targets += [
        _wall_target("plan", largest, PLAN_WALL_TARGET),
        _wall_target("apply", apply, APPLY_WALL_TARGET),
        _target("offline", offline, "cpu_seconds", cpu, OFFLINE_CPU_TARGET, "s"),
        _target("offline", offline, "peak_rss_mb", rss, OFFLINE_RSS_TARGET, "MB"),
    ]
    return [target for target in targets if target["limit"] is not None]


def _wall_target(section: str, result: dict[str, Any], limit: float) -> dict[str, Any]:
    value = ratio(result["ours"]["wall_seconds"], result["bound"]["wall_seconds"])
    # Without latency the bound is 0, so the ratio and its target do not apply.
    applicable_limit = limit if value is not None else None
    return _target(section, result, "wall_seconds", value, applicable_limit, "x bound")


def _target(
    section: str,
    result: dict[str, Any],
    figure: str,
    value: float | None,
    limit: float | None,
    unit: str,
) -> dict[str, Any]:
    return {
        "section": section,
        "datasets": result["datasets"],
        "figure": figure,
        "value": value,
        "limit": limit,
        "unit": unit,
        "met": value is not None and limit is not None and value <= limit,
    }


def format_number(value: float | None, unit: str = "") -> str:
    """Format a figure for the table: counts whole, the rest with 2 decimals."""
    if value is None:
        return "-"
    if unit == "requests":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def target_text(targets: list[dict[str, Any]], section: str, figure: str) -> str:
    """Describe the target of one table row and whether it was met, or '-'."""
    for target in targets:
        if target["section"] == section and target["figure"] == figure:
            verdict = "met" if target["met"] else "MISSED"
            limit = format_number(target["limit"], target["unit"])
            unit = target["unit"]
            return f"<= {limit} {unit}: {verdict}"
    return "-"


def comparison_rows(
    section: str, label: str, result: dict[str, Any], targets: list[dict[str, Any]]
) -> list[list[str]]:
    """Return the table rows of a plan or apply: requests, wall time, memory."""
    ours, naive = result["ours"], result["naive"]
    estimated = "~" if naive["extrapolated_from"] else ""
    mine = [target for target in targets if target["datasets"] == result["datasets"]]
    rows = []
    for figure, key in COMPARED_FIGURES:
        bound = result["bound"].get(key)
        unit = "requests" if key == "requests" else ""
        naive_text = format_number(naive[key], unit)
        if key != "peak_rss_mb":
            naive_text = estimated + naive_text
        rows.append(
            [
                f"{label} {figure}",
                format_number(ours[key], unit),
                format_number(bound, unit),
                format_number(ratio(ours[key], bound)),
                naive_text,
                format_number(result["naive_bound"].get(key), unit),
                format_number(ratio(naive[key], ours[key])),
                target_text(mine, section, key),
            ]
        )
    return rows


def render_table(rows: list[list[str]]) -> list[str]:
    """Lay rows out as a Markdown table, text left and figures right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column in (0, len(HEADER) - 1) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rules = [
        ":" + "-" * (width - 1)
        if column in (0, len(HEADER) - 1)
        else "-" * (width - 1) + ":"
        for column, width in enumerate(widths)
    ]
    lines.insert(1, "| " + " | ".join(rules) + " |")
    return lines


def render_report(results: dict[str, Any]) -> str:
    """Render the comparison table, the offline figures and their targets."""
    targets = results["targets"]
    rows = [list(HEADER)]
    for plan in results["plan"]:
        label = f"plan N={plan['datasets']:,}"
        rows += comparison_rows("plan", label, plan, targets)
    apply = results["apply"]
    label = f"apply {apply['changes']:,} of N={apply['datasets']:,}"
    rows += comparison_rows("apply", label, apply, targets)
    offline = results["offline"]
    for figure, key in OFFLINE_FIGURES:
        label = f"offline N={offline['datasets']:,} {figure}"
        target = target_text(targets, "offline", key)
        rows.append([label, format_number(offline[key]), *["-"] * 5, target])

    lines = render_table(rows)
    extrapolated = [
        result["naive"]["extrapolated_from"]
        for result in [*results["plan"], apply]
        if result["naive"]["extrapolated_from"]
    ]
    if extrapolated:
        lines.append("")
        lines.append(
            f"~ naive client run on the first {extrapolated[0]:,} datasets only; "
            "its wall time is scaled to all of them."
        )
    return "\n".join(lines)
