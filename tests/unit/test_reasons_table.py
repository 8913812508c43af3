"""README's table of Ready reasons is generated from ``failures.EXPLAINED``, which explains
every ``failures.Reason`` exactly once."""

from __future__ import annotations

import collections

import pytest

from crdref import reasons
from tokensync import failures

R = failures.Reason


def test_readme_table_matches_failures() -> None:
    assert reasons.current(), "README.md's Ready reason table is out of date: run `make docs`"


def test_every_reason_is_explained_exactly_once() -> None:
    listed = collections.Counter(reason for rs, _ in failures.EXPLAINED for reason in rs)
    assert set(R) - set(listed) == set(), "missing from failures.EXPLAINED"
    assert {r for r, n in listed.items() if n > 1} == set(), "listed twice in failures.EXPLAINED"
    assert reasons.problems() == []


@pytest.mark.parametrize(
    ("explained", "expected"),
    [
        pytest.param(
            ((tuple(R)[1:], "all but the first"),),
            [f"{R.TOKEN_ISSUED.value} is not explained"],
            id="missing",
        ),
        pytest.param(
            ((tuple(R), "all"), ((R.EXPIRED,), "again")),
            [f"{R.EXPIRED.value} is listed 2 times"],
            id="twice",
        ),
    ],
)
def test_an_incomplete_table_is_refused(explained: reasons.Explained, expected: list[str]) -> None:
    assert reasons.problems(explained=explained) == expected
    with pytest.raises(ValueError, match=expected[0]):
        reasons.render(explained=explained)


def test_rows_keep_the_readme_format() -> None:
    lines = reasons.render().splitlines()
    assert lines[2:4] == [
        "| Ready reason | what it means / what to do |",
        "| --- | --- |",
    ]
    assert (
        "| `UnauthorizedClient`, `UnsupportedGrantType` | the client may not use the client "
        "credentials grant; fix it at the provider |"
    ) in lines
    assert len(lines) == len(failures.EXPLAINED) + 6
