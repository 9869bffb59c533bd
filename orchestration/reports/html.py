"""HTML for notebooks (`_repr_html_`): a report's figures as a small table, escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, Mapping):
        value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "—"
    elif isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value) or "—"
    elif value is None:
        value = "—"
    return html.escape(str(value))


def fields_html(title: str, fields: Mapping[str, Any]) -> str:
    """A title and one row per field: name, value."""
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{_cell(v)}</td></tr>"
        for k, v in fields.items()
    )
    return f"<div><strong>{html.escape(title)}</strong><table>{rows}</table></div>"


def table_html(title: str, header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A title over a table with a header row."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div><strong>{html.escape(title)}</strong>{table}</div>"
