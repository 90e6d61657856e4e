import pytest
from numerals import from_roman, to_roman

KNOWN = [
    (1, "I"),
    (4, "IV"),
    (9, "IX"),
    (14, "XIV"),
    (40, "XL"),
    (90, "XC"),
    (400, "CD"),
    (944, "CMXLIV"),
    (1994, "MCMXCIV"),
    (2024, "MMXXIV"),
    (3999, "MMMCMXCIX"),
]


def test_to_roman_known_values():
    assert [to_roman(n) for n, _ in KNOWN] == [s for _, s in KNOWN]


def test_from_roman_known_values():
    assert [from_roman(s) for _, s in KNOWN] == [n for n, _ in KNOWN]


def test_round_trip_over_the_whole_range():
    assert all(from_roman(to_roman(n)) == n for n in range(1, 4000))


@pytest.mark.parametrize("bad", [0, -1, 4000])
def test_to_roman_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        to_roman(bad)


def test_to_roman_rejects_non_integers():
    for bad in (2.5, "5", None):
        with pytest.raises(TypeError):
            to_roman(bad)


def test_from_roman_rejects_non_canonical_numerals():
    for bad in ("IIII", "VV", "IC", "XM", "MMMM", "IIV", "VX", "LL", "CCCC"):
        with pytest.raises(ValueError):
            from_roman(bad)


def test_from_roman_rejects_junk():
    for bad in ("", "iv", "ABC", "X I", "12"):
        with pytest.raises(ValueError):
            from_roman(bad)
