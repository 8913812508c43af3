"""`make demo` really shows a token Secret being issued and refreshed."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_demo_issues_and_refreshes_a_token() -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tools'}:{REPO / 'tests'}"}
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--duration", "32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    # 30-second tokens are refreshed when about a third of the lifetime remains.
    assert "Secret billing-api-token v1:" in out, out
    assert "Secret billing-api-token v2:" in out, out
    assert "event: Normal Issued" in out
    assert "Ready=True (TokenIssued)" in out
    assert "demo-secret-change-me" not in out
