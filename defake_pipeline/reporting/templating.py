"""The one jinja2 environment of the reports and charts, with the filters that format figures
and make any value safe in a markdown table."""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import pandas as pd

from defake_pipeline.records import NO_PROMPT
from defake_pipeline.text import markdown_cell, markdown_code, markdown_link_target

TEMPLATES_DIR = Path(__file__).with_name("templates")


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(value, digits: int = 1) -> str:
    return "–" if missing(value) else f"{100 * float(value):.{digits}f}%"


def num(value, digits: int = 3) -> str:
    return "–" if missing(value) else f"{float(value):.{digits}f}"


def signed_pct(value, digits: int = 1) -> str:
    return "–" if missing(value) else f"{100 * float(value):+.{digits}f} pt"


def usd(value) -> str:
    return "–" if missing(value) else f"${float(value):.4f}"


def integer(value) -> str:
    return "–" if missing(value) else f"{int(value):,}"


def md_cell(value) -> str:
    """Any value shown literally in one markdown table cell (see ``markdown_cell``)."""
    return "" if missing(value) else markdown_cell(str(value))


def md_link_target(path: str) -> str:
    return markdown_link_target(path)


def code(value) -> str:
    """A value as a code span (model, prompt and dataset names)."""
    return markdown_code(str(value))


def prompt_cell(row) -> str:
    """The prompt of a row (anything with ``prompt``), or *baseline* for a detector that reads none."""
    prompt = row["prompt"] if isinstance(row, dict) else row.prompt
    return "*baseline*" if prompt == NO_PROMPT else code(prompt)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    pct=pct,
    num=num,
    signed_pct=signed_pct,
    usd=usd,
    integer=integer,
    md_cell=md_cell,
    link=md_link_target,
    code=code,
    prompt_cell=prompt_cell,
)
ENV.globals.update(no_prompt=NO_PROMPT)
