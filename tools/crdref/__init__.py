"""The ClientCredential field reference in docs/reference.md, generated from the CRD.

The CRD's schema (crds/) is the one place every field is described, for ``kubectl
explain`` too; this renders it as Markdown between two marker lines of
docs/reference.md, so the reference cannot drift from what the API server enforces.
``make docs`` rewrites the section; tests/unit/test_reference_docs.py checks it.

The package holds the other documentation generated from the code as well: README's table
of Ready reasons (:mod:`crdref.reasons`); :mod:`crdref.sections` writes both into their files.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from crdref import sections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "clientcredentials.tokensync.dev.yaml"
REFERENCE_PATH = REPO_ROOT / "docs" / "reference.md"
BEGIN = "<!-- BEGIN GENERATED FROM crds/clientcredentials.tokensync.dev.yaml: make docs -->"
END = "<!-- END GENERATED -->"


def _load_crd(path: pathlib.Path) -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one CRD, found {len(docs)} documents")
    return dict(docs[0])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(schema: Mapping[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type(schema['additionalProperties'])}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(schema: Mapping[str, Any]) -> list[str]:
    notes = []
    if "enum" in schema:
        notes.append("One of: " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".")
    if "default" in schema and "Default" not in str(schema.get("description", "")):
        notes.append(f"Default: `{schema['default']}`.")
    bounds = [
        (key, label)
        for key, label in (
            ("minimum", "minimum"),
            ("maximum", "maximum"),
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("maxItems", "max items"),
        )
        if key in schema
    ]
    if bounds:
        notes.append(
            ", ".join(f"{label} {schema[key]}" for key, label in bounds).capitalize() + "."
        )
    for rule in schema.get("x-kubernetes-validations") or []:
        if rule.get("message"):
            notes.append(f"Admission check: {_cell(str(rule['message']))}.")
    return notes


def _rows(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    required = set(schema.get("required") or [])
    properties: Mapping[str, Any] = schema.get("properties") or {}
    for name, sub in properties.items():
        field = f"{path}.{name}"
        kind = _type(sub) + (", required" if name in required else "")
        text = " ".join([_cell(str(sub.get("description") or "")), *_constraints(sub)]).strip()
        yield f"| `{field}` | {kind} | {text} |"
        if sub.get("type") == "array" and (sub.get("items") or {}).get("properties"):
            yield from _rows(sub["items"], f"{field}[]")
        elif sub.get("properties"):
            yield from _rows(sub, field)


def render(crd_path: pathlib.Path = CRD_PATH) -> str:
    crd = _load_crd(crd_path)
    names = crd["spec"]["names"]
    lines = [BEGIN, ""]
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        group = crd["spec"]["group"]
        lines += [
            f"### {names['kind']} {group}/{version['name']}",
            "",
            _cell(str(schema.get("description") or "")),
            "",
            f"Scope: {crd['spec']['scope']}. Short names: "
            + ", ".join(f"`{n}`" for n in names.get("shortNames", []))
            + ". Categories: "
            + ", ".join(f"`{c}`" for c in names.get("categories", []))
            + ".",
            "",
        ]
        for rule in schema.get("x-kubernetes-validations") or []:
            lines.append(f"- Admission check: {_cell(str(rule.get('message', '')))}")
        if schema.get("x-kubernetes-validations"):
            lines.append("")
        for part in ("spec", "status"):
            sub = schema["properties"].get(part)
            if not sub:
                continue
            lines += [
                f"#### `{part}`",
                "",
                _cell(str(sub.get("description") or "")),
                "",
                "| Field | Type | Description |",
                "| --- | --- | --- |",
                *_rows(sub, part),
                "",
            ]
        columns = version.get("additionalPrinterColumns") or []
        if columns:
            lines += [
                "#### Printer columns (`kubectl get ccred`; `-o wide` adds those marked wide)",
                "",
                "| Column | Source | Description |",
                "| --- | --- | --- |",
            ]
            for column in columns:
                wide = " (wide)" if column.get("priority", 0) > 0 else ""
                lines.append(
                    f"| {column['name']}{wide} | `{_cell(column['jsonPath'])}` | "
                    f"{_cell(str(column.get('description') or ''))} |"
                )
            lines.append("")
    lines.append(END)
    return "\n".join(lines)


def update(reference: pathlib.Path = REFERENCE_PATH, crd_path: pathlib.Path = CRD_PATH) -> bool:
    """Rewrite the generated section of ``reference``; True when it changed."""
    return sections.replace(reference, begin=BEGIN, end=END, rendered=render(crd_path))


def current(reference: pathlib.Path = REFERENCE_PATH, crd_path: pathlib.Path = CRD_PATH) -> bool:
    return sections.current(reference, begin=BEGIN, end=END, rendered=render(crd_path))
