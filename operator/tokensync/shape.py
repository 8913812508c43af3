"""What the target Secret's data holds: its type, its keys and their values (decision 0040).

Three shapes, chosen by ``spec.target``:

- the default: Opaque, with ``access_token``, ``token_type``, ``expires_at``,
  ``authorization`` and ``scope`` (when granted), as tokensync always wrote it;
- ``type: kubernetes.io/dockerconfigjson``: one key, ``.dockerconfigjson``, which the
  kubelet reads to pull images with the token as the registry password;
- ``template``: the keys the user chose, each rendered by :mod:`tokensync.templates`.

A Secret of another shape than the default lists the keys tokensync wrote, and a digest of
what it wrote, in two annotations: so the Secret alone says whether it is whole (after a
start, nothing is fetched) and which keys to remove when the shape changes. Pure: no I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Mapping

from tokensync import failures, model

#: The keys of the default shape, in the order they are written.
DEFAULT_KEYS = ("access_token", "token_type", "expires_at", "authorization", "scope")
#: The one key of a kubernetes.io/dockerconfigjson Secret (k8s.io/api core/v1
#: DockerConfigJsonKey).
DOCKER_CONFIG_KEY = ".dockerconfigjson"
#: On a target of any other shape: the keys tokensync wrote, sorted, comma-separated (a
#: Secret key cannot hold a comma).
DATA_KEYS_ANNOTATION = f"{model.GROUP}/data-keys"
#: On a target of any other shape: :func:`data_digest` of what tokensync wrote.
DATA_DIGEST_ANNOTATION = f"{model.GROUP}/data-digest"
#: The template variables, with what they hold: the docs and `tokensync fetch` list these.
VARIABLES: Mapping[str, str] = {
    "access_token": "the access token",
    "token_type": "the token type as the server sent it (Bearer)",
    "authorization": 'the HTTP Authorization header value: "Bearer <token>"',
    "expires_at": "when the token expires, RFC 3339 (2026-11-22T23:15:00Z)",
    "expires_at_epoch": "when the token expires, in seconds since 1970 (an integer)",
    "expires_in": "the token's lifetime in seconds (an integer)",
    "issued_at": "when the token was issued, RFC 3339",
    "scope": "the granted scope, space-separated; empty when the server said none",
    "refresh_token": "the refresh token, when the server sent one (else empty): written "
    "only where a template uses it (decision 0048)",
}
#: Values a template is first rendered with, before any token is fetched, so that a
#: template that cannot render costs no token. The token is shaped like a JWT (three
#: base64url parts), for templates that take it apart.
_PLACEHOLDER_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwbGFjZWhvbGRlciJ9.cGxhY2Vob2xkZXI"
_PLACEHOLDER_TYPE = "Bearer"
_PLACEHOLDER_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """The fields of a token that a shape is rendered from."""

    access_token: str = dataclasses.field(repr=False)
    token_type: str
    expires_at: datetime.datetime
    scope: str | None
    issued_at: datetime.datetime | None = None
    refresh_token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Written:
    """What tokensync wrote into a target's data: its keys, and whether they are listed in
    :data:`DATA_KEYS_ANNOTATION` (every shape but the default)."""

    keys: frozenset[str]
    listed: bool


DEFAULT_WRITTEN = Written(frozenset(DEFAULT_KEYS), listed=False)


def is_default(target: model.TargetSpec) -> bool:
    return target.template is None and target.type is model.SecretType.OPAQUE


def header_value(token_type: str, access_token: str) -> str:
    # RFC 6750: the scheme is "Bearer"; servers send "bearer" as often as not.
    scheme = "Bearer" if token_type.lower() == "bearer" else token_type
    return f"{scheme} {access_token}"


def variables(token: Token) -> dict[str, object]:
    """What a template may use (:data:`VARIABLES`). Without an issue time (only in tests),
    issued_at and expires_in are left undefined, so a template using them fails."""
    found: dict[str, object] = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "authorization": header_value(token.token_type, token.access_token),
        "expires_at": model.format_time(token.expires_at),
        "expires_at_epoch": int(token.expires_at.timestamp()),
        "scope": token.scope or "",
        "refresh_token": token.refresh_token or "",
    }
    if token.issued_at is not None:
        found["issued_at"] = model.format_time(token.issued_at)
        found["expires_in"] = round((token.expires_at - token.issued_at).total_seconds())
    return found


def check(target: model.TargetSpec) -> None:
    """Render the template with placeholder values: a template that cannot render is
    refused before a token is fetched for it. Raises a TemplateFailed failure whose
    message has Jinja's error (the values in it are placeholders, never a token)."""
    if target.template is None:
        return
    # Imported by the first template: Jinja2 costs about 2 MiB in every process, and most
    # operators render none (issue 19, decision 0053).
    from tokensync import templates  # noqa: PLC0415 -- see above

    placeholder = Token(
        access_token=_PLACEHOLDER_TOKEN,
        token_type=_PLACEHOLDER_TYPE,
        expires_at=_PLACEHOLDER_TIME + datetime.timedelta(hours=1),
        scope="placeholder.scope",
        issued_at=_PLACEHOLDER_TIME,
    )
    try:
        templates.render(dict(target.template.data), variables(placeholder))
    except templates.KeyedProblem as problem:
        raise _failed(problem.key, problem.message) from None


def render(
    target: model.TargetSpec, token: Token, *, show_error: bool = False
) -> dict[str, str | None]:
    """The target's data, as text (not yet base64): None marks a key to remove.

    A template that renders with the placeholders of :func:`check` but not with this
    token raises TemplateFailed; without Jinja's or Python's message when it could quote
    the token, unless ``show_error`` (`tokensync fetch --render`, run by whoever holds the
    token).
    """
    if target.template is not None:
        from tokensync import templates  # noqa: PLC0415 -- imported late, as in check()

        try:
            return dict(templates.render(dict(target.template.data), variables(token)))
        except templates.KeyedProblem as problem:
            if show_error or not problem.quotes_values:
                raise _failed(problem.key, problem.message) from None
            raise _failed(
                problem.key,
                "failed with the token that was issued, though it renders with placeholder "
                "values (the error is not shown: it could quote the token); try it with "
                "`tokensync fetch --render`",
            ) from None
    if target.type is model.SecretType.DOCKER_CONFIG_JSON:
        assert target.docker_config is not None  # the parser requires it with this type
        return {DOCKER_CONFIG_KEY: docker_config_json(target.docker_config, token.access_token)}
    # The order of the keys is the order of the Secret written before there were shapes.
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": model.format_time(token.expires_at),
        "authorization": header_value(token.token_type, token.access_token),
        "scope": token.scope or None,
    }


def docker_config_json(config: model.DockerConfig, password: str) -> str:
    """A ~/.docker/config.json with one registry, as the kubelet reads it (k8s.io/kubernetes
    pkg/credentialprovider: DockerConfigJSON, DockerConfigEntry). ``auth`` is
    base64(username:password), which the kubelet prefers over the two fields when set."""
    auth = base64.b64encode(f"{config.username}:{password}".encode()).decode()
    entry = {"username": config.username, "password": password, "auth": auth}
    return json.dumps({"auths": {config.registry: entry}}, sort_keys=True)


def data_digest(
    data: Mapping[str, object], keys: tuple[str, ...], times: tuple[object, ...]
) -> str:
    """A digest of the ``keys`` of ``data`` (base64 values, as stored) and of the token's
    ``times`` annotations: equal for a rendered body and the Secret it became."""
    hashed = hashlib.sha256()
    for value in (*keys, *(data.get(key) for key in keys), *times):
        if isinstance(value, str):
            encoded = value.encode()
            hashed.update(b"\x01" + len(encoded).to_bytes(4, "big") + encoded)
        else:
            hashed.update(b"\x00")
    return "sha256:" + hashed.hexdigest()


def listed_keys(annotations: Mapping[str, object]) -> tuple[str, ...] | None:
    """The keys :data:`DATA_KEYS_ANNOTATION` lists; None without one (the default shape)."""
    value = annotations.get(DATA_KEYS_ANNOTATION)
    if not isinstance(value, str):
        return None
    return tuple(key for key in value.split(",") if key)


def _failed(key: str, message: str) -> failures.Failure:
    return failures.Failure(
        failures.Reason.TEMPLATE_FAILED,
        f"spec.target.template.data[{key}]: {message}",
        kind=failures.Kind.SPEC,
    )
