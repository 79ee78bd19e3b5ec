import pytest

from clipfleet.modelref import ModelRef, parse_model_ref


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fast", ModelRef("fast")),
        ("fast/canary", ModelRef("fast", variant="canary")),
        ("custom:org/fashion-clip", ModelRef("custom", model_id="org/fashion-clip")),
        ("custom:shop_v2.pt", ModelRef("custom", model_id="shop_v2.pt")),
    ],
)
def test_parses_each_form_and_round_trips(text, expected):
    assert parse_model_ref(text) == expected
    assert str(parse_model_ref(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "Fast", "fast/", "fast/Canary", "fast/canary:x", "custom:", "custom:../x", "a" * 300],
)
def test_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_model_ref(text)
