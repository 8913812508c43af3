"""The paths of spec.responseMapping: what a tenant may write, compiled once, and what it finds.

A token endpoint that does not answer in RFC 6749's shape (``{"data": {"accessToken": ...}}``)
is read through JMESPath expressions (decision 0046). Tenants are untrusted and write these
expressions, so only the path subset of JMESPath is accepted: names, "quoted names" and
array indexes, joined by dots. Such a path costs one lookup per step, whatever the response
holds; projections, filters, functions and multiselects, whose cost can grow with the body
or double with each step, are refused. The same :data:`PATH_PATTERN` is the CRD's admission
rule, so what admission lets through, this module accepts. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser

from tokensync import model

#: The longest expression: at most about a hundred steps, each one dict or list lookup.
MAX_EXPRESSION_LENGTH = 256

# A name as JMESPath writes it unquoted, or quoted with JSON's escapes (printable ASCII
# only: the expression is echoed in BadResponse messages, which reach status and Events).
_NAME = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[ !#-\[\]-~]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})+")'
_STEP = rf"{_NAME}(?:\[-?[0-9]+\])*"
#: The path subset, as an RE2-compatible regular expression (the CRD's CEL rule uses it).
PATH_PATTERN = rf"^{_STEP}(?:\.{_STEP})*$"
_PATH = re.compile(PATH_PATTERN)
PATH_MESSAGE = (
    'must be a path of names, "quoted names" and [indexes] joined by dots, for example '
    "data.accessToken or tokens[0].value"
)

# The JMESPath nodes such a path compiles to; anything else is refused even if the pattern
# let it through (a second line, should the two ever disagree).
_PATH_NODES = frozenset({"field", "subexpression", "index_expression", "index"})


class BadExpression(ValueError):
    """An expression outside the path subset; the message never repeats the expression."""


def compile_path(expression: str, *, field: str) -> jmespath.parser.ParsedResult:
    """The compiled path, or a :class:`model.SpecError` naming ``field``."""
    try:
        return _compiled(expression)
    except BadExpression as exc:
        raise model.SpecError(field, str(exc)) from None


def find(expression: str, document: Mapping[str, Any]) -> object:
    """What the path finds in ``document``; None when any step finds nothing.

    A step on the wrong kind of value (a name on a list, an index on an object, an index
    past the end) finds nothing rather than failing. Raises :class:`BadExpression` for an
    expression outside the subset (the parser refuses those before any request).
    """
    return _compiled(expression).search(document)


# Parsing is cached here, and validated once per distinct expression: every attempt parses
# the spec again. Bounded, since tenants choose the expressions.
@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> jmespath.parser.ParsedResult:
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise BadExpression(f"must be at most {MAX_EXPRESSION_LENGTH} characters")
    if not _PATH.fullmatch(expression):
        raise BadExpression(PATH_MESSAGE)
    try:
        compiled = jmespath.compile(expression)
    # RecursionError: the Pratt parser recurses per nesting level (not reachable within the
    # pattern and the length, kept as a guard).
    except (jmespath.exceptions.JMESPathError, RecursionError):
        raise BadExpression(PATH_MESSAGE) from None
    if not _only_path_nodes(compiled.parsed):
        raise BadExpression(PATH_MESSAGE)
    return compiled


def _only_path_nodes(node: Mapping[str, Any]) -> bool:
    pending = [node]
    while pending:
        current = pending.pop()
        if current.get("type") not in _PATH_NODES:
            return False
        pending.extend(child for child in current.get("children", ()) if isinstance(child, dict))
    return True
