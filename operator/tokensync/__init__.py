"""tokensync: keeps OAuth 2.0 client-credentials access tokens fresh in Kubernetes Secrets."""

__version__ = "0.1.0"
