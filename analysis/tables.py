"""One table model, four renderings: text (<= 72 columns, for a patch cover letter),
markdown, csv and json."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

TEXT_WIDTH = 72


@dataclass(frozen=True)
class Section:
    """A titled group of rows (a workload), with an optional summary row."""

    title: str
    rows: list[list[str]]
    summary: list[str] | None = None


@dataclass(frozen=True)
class Table:
    header: str                      # what and where; a second line may say how (the method)
    columns: list[str]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the full-precision content, for json

    def all_rows(self) -> list[list[str]]:
        return [r for s in self.sections for r in s.rows]


def fmt_value(v: float) -> str:
    """A measured value with 4 significant digits (whole numbers from 1000 up)."""
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def text(t: Table) -> str:
    """Plain text no wider than 72 columns."""
    rows = [t.columns] + [r for s in t.sections for r in [*s.rows, *([s.summary] if s.summary else [])]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(t.columns))]
    rest = sum(widths[1:]) + 2 * (len(widths) - 1) + 2
    widths[0] = max(min(widths[0], TEXT_WIDTH - rest), 8)  # many wide columns: wider than 72, never a crash

    def line(cells: list[str], indent: str = "  ") -> str:
        others = "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        if len(cells[0]) > widths[0]:  # a long name gets its own line rather than a cut
            return f"{indent}{_fit(cells[0], TEXT_WIDTH - len(indent))}\n{indent}{'':<{widths[0]}}  {others}".rstrip()
        return (indent + cells[0].ljust(widths[0]) + "  " + others).rstrip()

    out = [*(_fit(h, TEXT_WIDTH) for h in t.header.splitlines()), line(t.columns)]
    for s in t.sections:
        out.append(_fit(s.title, TEXT_WIDTH))
        out += [line(r) for r in s.rows]
        if s.summary:
            out.append(line(s.summary))
    out += [_fit(n, TEXT_WIDTH) for n in t.notes]
    return "\n".join(out)


def markdown(t: Table) -> str:
    first, _, rest = t.header.partition("\n")
    out = [f"**{first}**" + (f"  \n{rest}" if rest else ""), "", "| " + " | ".join(["section", *t.columns]) + " |",
           "|" + "---|" * (len(t.columns) + 1)]
    for s in t.sections:
        for r in [*s.rows, *([s.summary] if s.summary else [])]:
            out.append("| " + " | ".join([s.title, *r]) + " |")
    out += ["", *[f"- {n}" for n in t.notes]]
    return "\n".join(out).rstrip()


def csv_text(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", *t.columns])
    for s in t.sections:
        for r in [*s.rows, *([s.summary] if s.summary else [])]:
            w.writerow([s.title, *r])
    return buf.getvalue().rstrip("\n")


def json_text(t: Table) -> str:
    return json.dumps({"header": t.header, **t.data, "notes": t.notes}, indent=1)


RENDERERS = {"text": text, "markdown": markdown, "csv": csv_text, "json": json_text}


def render(t: Table, fmt: str) -> str:
    return RENDERERS[fmt](t)
