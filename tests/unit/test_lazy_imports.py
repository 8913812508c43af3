"""The operator's start does not import what only some credentials use (decision 0053)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

OPERATOR = pathlib.Path(__file__).resolve().parents[2] / "operator"
#: Imported by the first credential that needs them: signing keys (about 9 MiB with
#: PyJWT) and templates (Jinja2, about 2 MiB).
LATE = ("jwt", "cryptography", "jinja2")


def test_the_operator_starts_without_signing_or_template_libraries() -> None:
    code = (
        "import json, sys; import tokensync.cli, tokensync.handlers, tokensync.runtime; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(OPERATOR)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    loaded = set(json.loads(out))
    assert "kopf" in loaded
    assert loaded.isdisjoint(LATE)
