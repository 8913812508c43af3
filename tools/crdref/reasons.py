"""README's table of Ready reasons, generated from :mod:`tokensync.failures`.

``failures.Reason`` lists every reason the operator can put on the Ready condition and
``failures.EXPLAINED`` says what each means and what to do, in the order the table shows
them. Rendering the README's table from them means a new reason cannot ship undocumented:
rendering refuses a table that misses a reason or lists one twice. ``make docs`` rewrites
the table; tests/unit/test_reasons_table.py checks it.
"""

from __future__ import annotations

import collections
import pathlib

from crdref import sections
from tokensync import failures

README_PATH = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- BEGIN GENERATED FROM operator/tokensync/failures.py: make docs -->"
END = "<!-- END GENERATED -->"
HEADER = ("| Ready reason | what it means / what to do |", "| --- | --- |")

Explained = tuple[tuple[tuple[failures.Reason, ...], str], ...]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def problems(*, explained: Explained = failures.EXPLAINED) -> list[str]:
    """What keeps ``explained`` from listing every reason exactly once (empty when nothing)."""
    counts = collections.Counter(reason for reasons, _ in explained for reason in reasons)
    missing = [f"{r.value} is not explained" for r in failures.Reason if r not in counts]
    repeated = [f"{r.value} is listed {n} times" for r, n in counts.items() if n > 1]
    return missing + repeated


def render(*, explained: Explained = failures.EXPLAINED) -> str:
    """The table between its markers; ValueError when :func:`problems` finds any."""
    if found := problems(explained=explained):
        raise ValueError("failures.EXPLAINED: " + "; ".join(found))
    rows = [
        f"| {', '.join(f'`{reason.value}`' for reason in reasons)} | {_cell(meaning)} |"
        for reasons, meaning in explained
    ]
    return "\n".join([BEGIN, "", *HEADER, *rows, "", END])


def update(*, readme: pathlib.Path = README_PATH) -> bool:
    """Rewrite README's table; True when it changed."""
    return sections.replace(readme, begin=BEGIN, end=END, rendered=render())


def current(*, readme: pathlib.Path = README_PATH) -> bool:
    return sections.current(readme, begin=BEGIN, end=END, rendered=render())
