"""The report as a document: sections of figures and tables, written as Markdown, HTML and CSV.

Sections are built by the science modules; this one only lays them out. Tables are written twice: the CSV
holds full-precision numbers (means, sds, n in separate columns) for anyone who recomputes, the Markdown
the formatted ``mean ± sd (n=…)`` text a reader wants. ``report.html`` embeds PNG figures as base64, so the
single file reads the same when opened from MLflow's artifact view as from disk.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class FigureItem:
    path: Path  # inside the output directory
    title: str
    text: str  # what was run and what to look at: one short paragraph


@dataclass
class TableItem:
    name: str  # file stem under tables/
    display: pd.DataFrame  # formatted text cells
    data: pd.DataFrame  # numbers, for the CSV
    title: str
    text: str


@dataclass
class Section:
    title: str
    text: str = ""
    items: list = field(default_factory=list)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def write_tables(out: Path, sections: list[Section]) -> None:
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    for item in _items(sections, TableItem):
        item.data.to_csv(folder / f"{item.name}.csv", index=False)
        (folder / f"{item.name}.md").write_text(f"### {item.title}\n\n{item.text}\n\n{markdown_table(item.display)}\n")


def _items(sections: list[Section], kind: type) -> list:
    return [item for section in sections for item in section.items if isinstance(item, kind)]


def render_markdown(title: str, preamble: str, sections: list[Section], out: Path) -> str:
    lines = [f"# {title}", "", preamble, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        for item in section.items:
            if isinstance(item, FigureItem):
                rel = item.path.relative_to(out).as_posix()
                lines += [f"### {item.title}", "", item.text, "", f"![{item.title}]({rel})", ""]
            else:
                lines += [f"### {item.title}", "", item.text, "", markdown_table(item.display), "",
                          f"(CSV: `tables/{item.name}.csv`)", ""]
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    """Plain text with '- ' bullet lines as HTML; nothing else of Markdown is used in our prose."""
    blocks = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if lines and all(line.startswith("- ") for line in lines):
            blocks.append("<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines) + "</ul>")
        elif block.strip():
            blocks.append(f"<p>{html.escape(' '.join(lines))}</p>")
    return "\n".join(blocks)


def _figure_html(item: FigureItem, out: Path) -> str:
    rel = item.path.relative_to(out).as_posix()
    if item.path.suffix.lower() == ".png":
        data = base64.b64encode(item.path.read_bytes()).decode("ascii")
        body = f'<img src="data:image/png;base64,{data}" alt="{html.escape(item.title)}">'
    else:  # a PDF cannot be inlined as an image: embed it by its relative path beside the report
        body = (f'<object data="{html.escape(rel)}" type="application/pdf" width="100%" height="600">'
                f'<a href="{html.escape(rel)}">{html.escape(rel)}</a></object>')
    return f"<figure><figcaption><h3>{html.escape(item.title)}</h3></figcaption>{body}{_paragraphs(item.text)}</figure>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}"""


def render_html(title: str, preamble: str, sections: list[Section], out: Path) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>", _paragraphs(preamble)]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(_paragraphs(section.text))
        for item in section.items:
            if isinstance(item, FigureItem):
                parts.append(_figure_html(item, out))
            else:
                parts += [f"<h3>{html.escape(item.title)}</h3>", _paragraphs(item.text),
                          item.display.to_html(index=False, na_rep="", escape=True, border=0),
                          f"<p>CSV: <code>tables/{html.escape(item.name)}.csv</code></p>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_document(out: Path, title: str, preamble: str, sections: list[Section]) -> list[Path]:
    """Write tables, ``report.md`` and ``report.html``; returns the two report paths."""
    write_tables(out, sections)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(title, preamble, sections, out))
    page.write_text(render_html(title, preamble, sections, out))
    return [md, page]
