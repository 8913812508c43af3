"""The Dockerfile agrees with the Deployment and the package (hadolint lints it in `make lint`).

No image is built here (no container runtime or base image registry); what can be checked
without one is checked: the base is pinned by digest, the final stage runs as the numeric
user the Deployment expects and starts ``tokensync run``, and the build context holds
everything the COPY lines need.
"""

from __future__ import annotations

import pathlib
import re
import tomllib

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
DEPLOYMENT = yaml.safe_load((REPO_ROOT / "deploy" / "base" / "deployment.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_base_image_is_pinned_by_digest() -> None:
    (arg,) = [rest for word, rest in instructions() if word == "ARG" and "PYTHON_IMAGE" in rest]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}", arg)
    bases = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert bases == ["${PYTHON_IMAGE}"] * 3


def test_runs_as_the_numeric_user_the_deployment_expects() -> None:
    (user,) = [rest for word, rest in final_stage() if word == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    pod = DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]
    assert (uid, gid) == (pod["runAsUser"], pod["runAsGroup"])
    assert uid != 0


def test_entrypoint_is_tokensync_run() -> None:
    (entrypoint,) = [rest for word, rest in final_stage() if word == "ENTRYPOINT"]
    assert entrypoint == '["tokensync", "run"]'
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tokensync"] == "tokensync.cli:main"


def test_final_stage_holds_only_the_venv() -> None:
    copies = [rest for word, rest in final_stage() if word == "COPY"]
    assert copies == ["--from=venv /opt/tokensync /opt/tokensync"]
    exposed = {int(p) for word, rest in final_stage() if word == "EXPOSE" for p in rest.split()}
    container = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
    assert exposed == {p["containerPort"] for p in container["ports"]}


def test_build_context_holds_what_copy_needs() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from="):
            *sources, _ = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
                assert (REPO_ROOT / source).exists()


def test_user_name_is_set_for_a_uid_without_a_passwd_entry() -> None:
    """kopf names the operator after getpass.getuser(): $USER first, then /etc/passwd, where
    65532 (or a UID the cluster assigns) has no entry, so without $USER the operator exits at
    start (KeyError: 'getpwuid(): uid not found: 65532'; tests/e2e/test_operator_pod.py)."""
    env = " ".join(rest for word, rest in final_stage() if word == "ENV")
    assert re.search(r"(^|\s)USER=\w+", env), env
