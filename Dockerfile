# tokensync operator image: `docker build -t ghcr.io/tokensync/tokensync:0.1.0 .`
# (ghcr.io/tokensync is a placeholder registry: tag and push to your own and set the image
# in your kustomize overlay or the Helm chart's image.repository).
#
# Three stages: build the wheel; install it with its pinned dependencies into a venv;
# copy only that venv onto a clean base. The final image has no compiler, no pip, no
# setuptools and no source tree, and runs as a numeric non-root user, so Kubernetes can
# verify runAsNonRoot without reading /etc/passwd.
#
# The base is pinned by digest (python:3.11-slim). Override with
# --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest>; keep all stages on one base,
# since the venv refers to its interpreter by path.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
# A venv without pip of its own: the base image's pip installs into it (--python).
RUN python -m venv --without-pip /opt/tokensync \
    && python -m pip --python /opt/tokensync/bin/python install \
        --no-compile -c /tmp/constraints.txt /tmp/wheels/tokensync-*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tokensync" \
      org.opencontainers.image.description="Kubernetes operator that keeps OAuth 2.0 client-credentials access tokens fresh in Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing installs packages at run time; drop the installers the base image ships.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel
COPY --from=venv /opt/tokensync /opt/tokensync
# USER: the numeric user has no /etc/passwd entry (nor has whatever UID a cluster assigns),
# and kopf names the operator after getpass.getuser(), which reads $USER before the
# password database; without it `tokensync run` exits at start with KeyError: 'getpwuid():
# uid not found: 65532' (found by the pod test, tests/e2e/test_operator_pod.py).
ENV PATH=/opt/tokensync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    USER=tokensync
USER 65532:65532
EXPOSE 8080 8081 8082
ENTRYPOINT ["tokensync", "run"]
