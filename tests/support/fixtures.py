"""Fixtures shared by e2e modules: a token server and the operator process.

Module-scoped: each test module gets its own operator, so a module that kills or restarts
it (chaos tests) cannot disturb another.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, install_operator_identity
from support.tokenserver import TokenServer


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600) as server:
        yield server


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = install_operator_identity(cluster, api_client, workdir / "sa.kubeconfig")
    with OperatorProcess(kubeconfig=kubeconfig, log_path=workdir / "operator.log") as proc:
        yield proc
