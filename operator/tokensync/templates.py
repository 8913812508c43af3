"""The sandbox that renders ``spec.target.template``: Jinja2, cut down to expressions.

Any tenant who may create a ClientCredential writes these templates, and one operator
renders them all on its event loop, so a template must not reach Python objects, and must
not cost more than a bounded amount of memory and time whatever it says (decision 0040):

- Jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` refuses attributes
  starting with ``_`` and anything that mutates; StrictUndefined makes a misspelt variable
  an error instead of an empty string; no loader, so no ``include`` or ``import``.
- The parsed template is checked against an allowlist of node types before it is compiled:
  text, ``{{ expressions }}``, filters, tests and ``{% if %}``. No loops, macros, ``set``
  or calls: with these, each node runs at most once.
- Filters are an allowlist too, and every filter, operator and ``~`` that can make a value
  larger checks its size first, against :data:`MAX_OUTPUT`, and spends from a work budget
  (:data:`WORK_BUDGET` characters), so that a chain of a thousand filters stops early. The
  budget counts characters, not seconds: a slow machine never fails a good template.

Compiled templates are cached by their text (:data:`CACHE_SIZE`). Pure: no I/O. A template
that fails raises :class:`KeyedProblem`, which says whether its message may quote a value.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from jinja2 import filters, nodes, sandbox, visitor

#: At most this many characters rendered by one credential's templates together, and in
#: any value a template computes. A Secret holds at most 1 MiB; this, base64-encoded
#: (342 KiB), leaves room for the labels and annotations (at most 16 KiB from the spec).
MAX_OUTPUT = 256 * 1024
#: Characters that filters, operators and ``~`` may produce or read in one render. A
#: template renders a few hundred; a 200 KiB token through a few filters stays far below.
WORK_BUDGET = 4 * 1024 * 1024
#: Compiled templates kept, by text. Most clusters share a handful of templates.
CACHE_SIZE = 128
#: Integers larger than this many bits are refused: nothing a token needs, and Python's
#: big integers make ``expires_in ** expires_in`` a denial of service.
MAX_INT_BITS = 128
#: An error message is cut to this many characters (it goes to status and Events).
MAX_MESSAGE = 300

#: What a template may contain. Everything else (for, macro, call, set, include, with,
#: filter blocks, ...) is refused before the template is compiled.
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Filter,
    nodes.Test,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Add,
    nodes.Sub,
    nodes.Mul,
    nodes.Div,
    nodes.FloorDiv,
    nodes.Mod,
    nodes.Pow,
    nodes.Tuple,
    nodes.List,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
)
_MAX_INDENT = 8
#: Jinja's own filters, of which some are offered (:data:`FILTERS`).
_BUILTIN = filters.FILTERS
#: ``a ~ b`` is rewritten to this filter, which checks the size before joining.
_CONCAT_FILTER = "tokensync_concat"


class TemplateProblem(Exception):
    """A template that cannot be compiled or rendered. ``message`` holds no variable's
    value, unless the caller put one into an error itself (see :func:`render`)."""

    def __init__(self, message: str) -> None:
        message = " ".join(message.split())
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(slots=True)
class _Budget:
    left: int = WORK_BUDGET


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("tokensync_template_budget")


def _spend(size: int) -> None:
    budget = _budget.get(None)
    if budget is None:  # outside render(): nothing may run there
        raise TemplateProblem("a template runs only inside render()")
    budget.left -= size
    if budget.left < 0:
        raise TemplateProblem(
            f"the template does more than {WORK_BUDGET // (1024 * 1024)} MiB of string work"
        )


def _size(value: object) -> int:
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value)
    return 1


def _check_size(size: int) -> None:
    if size > MAX_OUTPUT:
        raise TemplateProblem(f"a value would be longer than {MAX_OUTPUT} characters")


def _checked(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateProblem(f"a number would be larger than {MAX_INT_BITS} bits")
    size = _size(value)
    _check_size(size)
    _spend(size)
    return value


def _b64encode(value: object) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _replace(value: object, old: object, new: object, count: int | None = None) -> str:
    text, old_text, new_text = str(value), str(old), str(new)
    # Known before it is built: "x"|replace("", token) grows with the square of the input.
    hits = text.count(old_text)
    if isinstance(count, int) and count >= 0:
        hits = min(count, hits)
    _check_size(len(text) + hits * max(len(new_text) - len(old_text), 0))
    return text.replace(old_text, new_text, -1 if count is None else count)


def _tojson(eval_ctx: Any, value: object, indent: int | None = None) -> Any:
    # An indent is written once per line of a list or dict: a wide one multiplies them.
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= _MAX_INDENT):
        raise TemplateProblem(f"tojson's indent must be between 0 and {_MAX_INDENT}")
    return _BUILTIN["tojson"](eval_ctx, value, indent)


def _concat(items: list[Any]) -> str:
    parts = [str(item) for item in items]
    _check_size(sum(len(part) for part in parts))
    return "".join(parts)


def _bounded(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that spends its input from the budget and whose result is checked."""

    # Jinja's own filters may ask for the context, the eval context or the environment.
    passes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)

    @jinja2.pass_context  # never folded at compile time, where no budget exists
    @functools.wraps(function)
    def wrapper(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        _spend(_size(value))
        if passes == "eval_context":
            args = (context.eval_ctx, value, *args)
        elif passes == "context":
            args = (context, value, *args)
        elif passes == "environment":
            args = (context.environment, value, *args)
        else:
            args = (value, *args)
        return _checked(function(*args, **kwargs))

    return wrapper


#: The filters a template may use. tojson and urlencode are Jinja's own.
FILTERS: Mapping[str, Callable[..., Any]] = {
    "b64encode": _bounded(_b64encode),
    "tojson": _bounded(jinja2.pass_eval_context(_tojson)),
    "urlencode": _bounded(_BUILTIN["urlencode"]),
    "upper": _bounded(_BUILTIN["upper"]),
    "lower": _bounded(_BUILTIN["lower"]),
    "trim": _bounded(_BUILTIN["trim"]),
    "replace": _bounded(_replace),
    "default": _bounded(_BUILTIN["default"]),
    "d": _bounded(_BUILTIN["default"]),
    "string": _bounded(str),
    "int": _bounded(_BUILTIN["int"]),
    "length": _bounded(len),
    _CONCAT_FILTER: _bounded(_concat),
}


def _finalize(value: Any) -> Any:
    """What ``{{ }}`` may print: text and numbers (not functions, dicts or objects)."""
    if isinstance(value, jinja2.Undefined | str | int | float):
        return value
    raise TemplateProblem(
        f"{{{{ }}}} printed a {type(value).__name__}: print strings and numbers "
        "(use tojson for lists and dicts)"
    )


class _Sandbox(sandbox.ImmutableSandboxedEnvironment):
    # +, * and ** can make large values (strings, lists, integers); % formats strings.
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        _spend(_size(left) + _size(right))
        if operator_ == "%" and isinstance(left, str):
            raise TemplateProblem("string formatting with % is not supported")
        if operator_ == "**" and not (isinstance(right, int) and abs(right) <= MAX_INT_BITS):
            raise TemplateProblem(f"exponents must be integers of at most {MAX_INT_BITS}")
        if operator_ == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                _check_size(len(sequence) * max(times, 0))
        if operator_ == "+" and not isinstance(left, int | float):
            _check_size(_size(left) + _size(right))
        return _checked(self.binop_table[operator_](left, right))


class _BoundConcat(visitor.NodeTransformer):
    """``a ~ b ~ c`` joins in one call that Jinja offers no hook for: make it a filter."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:  # noqa: N802 (visitor protocol)
        items = [self.visit(item) for item in node.nodes]
        joined = nodes.List(items, lineno=node.lineno)
        return nodes.Filter(joined, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


def _environment() -> _Sandbox:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        # Files end with the newline the YAML block scalar gave them (.netrc, properties).
        keep_trailing_newline=True,
        # A line holding only {% if %} or {% endif %} leaves no empty line behind.
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
        # Nothing is evaluated at compile time, where no budget applies.
        optimized=False,
        auto_reload=False,
        cache_size=0,
    )
    env.globals.clear()  # range, dict, lipsum, cycler, joiner, namespace
    env.filters = dict(FILTERS)
    return env


_ENV = _environment()


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template | None
    problem: str | None


def _check(tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            what = type(node).__name__
            raise TemplateProblem(
                f"line {node.lineno}: {what} is not allowed; a template may hold text, "
                "{{ expressions }} with filters, and {% if %} blocks"
            )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile(text: str) -> _Compiled:
    try:
        tree = _ENV.parse(text)
        _check(tree)
        tree = _BoundConcat().visit(tree)
        return _Compiled(_ENV.from_string(tree), None)
    except jinja2.TemplateSyntaxError as exc:
        return _Compiled(None, f"line {exc.lineno}: {exc.message}")
    except TemplateProblem as exc:
        return _Compiled(None, exc.message)


def compile_template(text: str) -> jinja2.Template:
    """The compiled template, from the cache; :class:`TemplateProblem` if it does not parse
    or uses what the sandbox refuses."""
    compiled = _compile(text)
    if compiled.template is None:
        raise TemplateProblem(compiled.problem or "the template does not compile")
    return compiled.template


def render(texts: Mapping[str, str], variables: Mapping[str, object]) -> dict[str, str]:
    """Render each template of ``texts`` (key -> template text) with ``variables``.

    Raises :class:`KeyedProblem` for the first that fails. Its message is Jinja's or ours;
    it may quote the template, and an error of Jinja's or Python's raised while evaluating
    can quote a value (``{{ {}[access_token] }}`` names the key it did not find): those say
    ``quotes_values``, and callers that render real tokens must not show them.
    """
    budget = _Budget()
    token = _budget.set(budget)
    rendered: dict[str, str] = {}
    total = 0
    try:
        for key, text in texts.items():
            try:
                template = compile_template(text)
                parts = []
                for part in template.generate(dict(variables)):
                    total += len(part)
                    _check_size(total)
                    parts.append(part)
                rendered[key] = "".join(parts)
            except TemplateProblem as exc:
                raise KeyedProblem(key, exc.message, quotes_values=False) from None
            except jinja2.TemplateSyntaxError as exc:
                raise KeyedProblem(key, _describe(exc), quotes_values=False) from None
            except jinja2.TemplateError as exc:
                raise KeyedProblem(key, _describe(exc), quotes_values=True) from None
            except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:
                message = f"{type(exc).__name__}: {exc}"
                raise KeyedProblem(key, message, quotes_values=True) from None
    finally:
        _budget.reset(token)
    if sum(len(value.encode()) for value in rendered.values()) > MAX_OUTPUT:
        key = next(iter(rendered))
        message = f"the rendered data is longer than {MAX_OUTPUT} bytes"
        raise KeyedProblem(key, message, quotes_values=False)
    return rendered


def _describe(exc: jinja2.TemplateError) -> str:
    name = type(exc).__name__
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"line {exc.lineno}: {exc.message}"
    return f"{name}: {exc.message or ''}"


class KeyedProblem(TemplateProblem):
    """A :class:`TemplateProblem` of the template of one key. ``quotes_values``: the
    message is an evaluation error of Jinja's or Python's, which may quote a value; ours
    (sizes, the budget, what the sandbox refuses) and syntax errors never do."""

    def __init__(self, key: str, message: str, *, quotes_values: bool) -> None:
        super().__init__(message)
        self.key = key
        self.quotes_values = quotes_values
