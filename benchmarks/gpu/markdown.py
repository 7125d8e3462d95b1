"""Markdown tables for the GPU tools' reports (no torch: the session kit's orchestrator uses it)."""
from __future__ import annotations


def table(header: list, rows: list) -> list[str]:
    """The lines of a Markdown table; a '|' inside a cell is escaped."""
    def cell(v):
        return str(v).replace("|", "\\|")
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]
