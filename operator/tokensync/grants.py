"""The grant's own parameters of a token request (spec.grant, decision 0047).

A token request is the grant (what is traded for a token: nothing but the client's
identity, a signed assertion, a subject token, or a provider's own parameters), then the
requested scope, audience and resources, then the client's proof (``clientauth``). This
module says what the grant adds; it is the one place that knows each grant's parameters,
so that adding a grant is one branch here and one in :mod:`tokensync.parsing`.

Pure: no I/O, and no kopf, kubernetes or httpx imports.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from tokensync import assertion, failures, model


def parameters(
    request: model.TokenRequest, material: model.ClientAuthMaterial, *, now: datetime
) -> list[tuple[str, str]]:
    """grant_type and the grant's own parameters, in the order they are sent."""
    if material.refresh_token:
        # RFC 6749 section 6; the scope, audience and resources follow, as with the grant.
        return [("grant_type", "refresh_token"), ("refresh_token", material.refresh_token)]
    grant = request.grant
    params = [("grant_type", grant.grant_type)]
    match grant.type:
        case model.GrantType.JWT_BEARER:
            params.append(("assertion", _bearer_assertion(request, material, now=now)))
        case model.GrantType.TOKEN_EXCHANGE:
            exchange = grant.token_exchange
            if exchange is None:  # parse_spec requires it: a second line for direct callers
                raise _missing("spec.grant.tokenExchange is not set")
            if not material.subject_token:
                raise _missing("the subject token of the token exchange is missing")
            params += [
                ("subject_token", material.subject_token),
                ("subject_token_type", exchange.subject_token_type),
            ]
            if exchange.requested_token_type:
                params.append(("requested_token_type", exchange.requested_token_type))
    return params


def _bearer_assertion(
    request: model.TokenRequest, material: model.ClientAuthMaterial, *, now: datetime
) -> str:
    """RFC 7523 section 3: iss and sub are the client id, aud the token endpoint (or
    spec.clientAssertion.audience), signed as a private_key_jwt client assertion is."""
    if not material.private_key:
        raise _missing("the private key that signs the JWT bearer assertion is missing")
    options = request.assertion
    try:
        key = assertion.load_private_key(
            material.private_key,
            certificate=material.certificate,
            algorithm=options.algorithm,
            key_id=options.key_id,
        )
        return assertion.sign(
            key,
            client_id=material.client_id,
            audience=options.audience or request.token_url,
            now=now,
            lifetime=options.lifetime,
            jti=secrets.token_urlsafe(24),
        )
    except assertion.KeyProblem as exc:
        raise failures.TokenError(str(exc), reason=exc.reason, permanent=True) from None


def _missing(message: str) -> failures.TokenError:
    return failures.TokenError(message, reason=failures.Reason.CREDENTIALS_MISSING, permanent=True)


def client_material(
    grant: model.Grant, material: model.ClientAuthMaterial
) -> model.ClientAuthMaterial:
    """The material ``auto`` picks a client authentication method from.

    With the JWT bearer grant the private key signs the grant: offering it to ``auto`` as
    well would sign a second assertion with the same key for nothing.
    """
    if grant.type is not model.GrantType.JWT_BEARER or material.private_key is None:
        return material
    return model.ClientAuthMaterial(
        client_id=material.client_id,
        client_secret=material.client_secret,
        tls_certificate=material.tls_certificate,
        tls_key=material.tls_key,
        external_assertion=material.external_assertion,
        client_secret_key=material.client_secret_key,
        fallback_secrets=material.fallback_secrets,
    )
