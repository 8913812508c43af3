"""Generated sections of hand-written Markdown files, between two marker lines.

Some documentation is generated from the code (the CRD reference, README's table of Ready
reasons) but lives in files that are otherwise written by hand. Each generated part sits
between a BEGIN and an END marker comment, and only that part is ever rewritten, so the
prose around it stays the author's.
"""

from __future__ import annotations

import pathlib


def _span(text: str, *, begin: str, end: str) -> tuple[int, int]:
    start = text.index(begin)
    return start, text.index(end, start) + len(end)


def current(path: pathlib.Path, *, begin: str, end: str, rendered: str) -> bool:
    """True when ``path``'s section (markers included) is ``rendered``."""
    text = path.read_text()
    start, stop = _span(text, begin=begin, end=end)
    return text[start:stop] == rendered


def replace(path: pathlib.Path, *, begin: str, end: str, rendered: str) -> bool:
    """Rewrite ``path``'s section (markers included) as ``rendered``; True when it changed."""
    text = path.read_text()
    start, stop = _span(text, begin=begin, end=end)
    new = text[:start] + rendered + text[stop:]
    if new == text:
        return False
    path.write_text(new)
    return True
