"""Tables as text: the one Markdown and CSV writer of the evaluation, the studies, the demo and the
sweeps (pure functions of already formatted cells; no dependencies)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """``| h1 | h2 |`` / ``|---|---|`` / one line per row -> text ending in a newline.

    Cells are written with ``str``; a ``|`` inside a cell becomes ``/`` (it would split the
    cell). align: per column "left" (default) or "right" (``---:``).
    """
    align = list(align or ["left"] * len(header))
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "right" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with a header line; None cells are empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if c is None else c for c in row])
    return buf.getvalue()
