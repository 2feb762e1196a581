import pytest

from calc.parse import parse_numbers


def test_commas_and_spaces():
    assert parse_numbers("1, 2 3,4") == [1.0, 2.0, 3.0, 4.0]


def test_negative_and_decimal():
    assert parse_numbers("-1.5, 2") == [-1.5, 2.0]


def test_bad_token_is_named():
    with pytest.raises(ValueError, match="'x'"):
        parse_numbers("1, x, 3")
