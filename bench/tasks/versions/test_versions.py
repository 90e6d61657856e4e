import pytest
from versions import bump, compare_versions, parse_version


def test_parse():
    assert parse_version("1.2.3") == (1, 2, 3)
    assert parse_version(" v10.0.7 ") == (10, 0, 7)
    assert parse_version("0.0.0") == (0, 0, 0)


def test_not_a_string():
    with pytest.raises(TypeError) as info:
        parse_version(123)
    assert str(info.value) == "version must be a string, not int"


def test_empty():
    for text in ("", "   "):
        with pytest.raises(ValueError) as info:
            parse_version(text)
        assert str(info.value) == "empty version string"


def test_wrong_number_of_parts():
    for text in ("1.2", "1.2.3.4", "v1"):
        with pytest.raises(ValueError) as info:
            parse_version(text)
        assert str(info.value) == f"expected MAJOR.MINOR.PATCH, got {text!r}"


def test_invalid_numbers():
    cases = {"1.x.3": "x", "1.2.-3": "-3", "a.b.c": "a", "1..3": "", "1.2.٣": "٣"}
    for text, part in cases.items():
        with pytest.raises(ValueError) as info:
            parse_version(text)
        assert str(info.value) == f"invalid number {part!r} in {text!r}"


def test_leading_zero():
    with pytest.raises(ValueError) as info:
        parse_version("1.01.0")
    assert str(info.value) == "leading zero in '01'"


def test_compare():
    assert compare_versions("1.10.0", "1.9.0") == 1
    assert compare_versions("1.2.3", "v1.2.3") == 0
    assert compare_versions("0.9.9", "1.0.0") == -1


def test_bump():
    assert bump("1.2.3", "patch") == "1.2.4"
    assert bump("1.2.3", "minor") == "1.3.0"
    assert bump("v1.2.3", "major") == "2.0.0"


def test_bump_unknown_part():
    with pytest.raises(ValueError) as info:
        bump("1.2.3", "build")
    assert str(info.value) == "unknown part 'build'; expected major, minor or patch"
