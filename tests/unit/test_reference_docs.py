"""docs/reference.md's ClientCredential section is what the CRD schema says."""

from __future__ import annotations

import crdref


def test_reference_matches_the_crd() -> None:
    assert crdref.current(), "docs/reference.md is out of date with the CRD: run `make docs`"


def test_every_spec_field_is_listed() -> None:
    text = crdref.REFERENCE_PATH.read_text()
    for field in ("spec.tokenURL", "spec.clientSecretRef.name", "spec.refresh.minInterval"):
        assert f"`{field}`" in text
