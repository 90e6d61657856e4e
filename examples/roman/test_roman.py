import pytest

from roman import from_roman, to_roman


@pytest.mark.parametrize(
    ("n", "numeral"),
    [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"), (40, "XL"), (90, "XC"), (400, "CD"),
     (1994, "MCMXCIV"), (2024, "MMXXIV"), (3999, "MMMCMXCIX")],
)
def test_round_trip(n, numeral):
    assert to_roman(n) == numeral
    assert from_roman(numeral) == n


@pytest.mark.parametrize("bad", [0, -1, 4000])
def test_to_roman_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        to_roman(bad)


@pytest.mark.parametrize("bad", ["", "IIII", "IC", "ABC", "MMMM"])
def test_from_roman_rejects_malformed(bad):
    with pytest.raises(ValueError):
        from_roman(bad)
