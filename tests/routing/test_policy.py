"""The routing policies a request's `model` field names, and the errors for bad ones."""

import pytest

from router_tasks.routing.policy import PolicyError, parse_model_name


@pytest.mark.parametrize(
    "name, kind, value",
    [
        ("tela-auto", "auto", None),
        ("tela-auto@0.25", "share", 0.25),
        ("router-knn-0.4", "threshold", 0.4),
        ("tela-cheapest@0.9", "cheapest", 0.9),
        ("tela-budget@3.5", "budget", 3.5),
        ("gpt-4o-mini", "direct", None),
    ],
)
def test_names_parse_to_their_policy(name, kind, value):
    policy = parse_model_name(name)
    assert policy.kind == kind
    if value is not None:
        assert policy.value == pytest.approx(value)


@pytest.mark.parametrize(
    "name, says",
    [
        ("tela-auto@1.5", "the strong share after '@' must be in [0, 1]"),
        ("router-mf-2", "the threshold must be in [0, 1]"),
        ("tela-cheapest@1e3", "the quality target after '@' must be in [0, 1]"),
        ("tela-fastest", "looks like a routing policy but is not one"),
        ("  ", "non-empty string"),
    ],
)
def test_bad_names_say_what_was_expected(name, says):
    with pytest.raises(PolicyError) as err:
        parse_model_name(name)
    assert says in str(err.value)
    if name.strip():
        assert repr(name.strip()) in str(err.value)
