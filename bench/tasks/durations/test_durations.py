import pytest
from durations import format_duration, parse_duration


def test_parse_single_units():
    assert parse_duration("45s") == 45
    assert parse_duration("2m") == 120
    assert parse_duration("3h") == 10800
    assert parse_duration("1d") == 86400


def test_parse_combinations():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d1h1m1s") == 90061
    assert parse_duration("90m") == 5400
    assert parse_duration("0s") == 0


def test_parse_allows_spaces_between_parts():
    assert parse_duration("1h 30m") == 5400
    assert parse_duration("  2d  4h ") == 187200


def test_parse_rejects_malformed_text():
    for bad in ("", "90", "1x", "30m1h", "1h1h", "-5m", "1.5h", "1H", "h", "1h30"):
        with pytest.raises(ValueError) as info:
            parse_duration(bad)
        assert str(info.value) == f"invalid duration: {bad!r}"


def test_format():
    assert format_duration(5400) == "1h30m"
    assert format_duration(90061) == "1d1h1m1s"
    assert format_duration(3600) == "1h"
    assert format_duration(59) == "59s"
    assert format_duration(0) == "0s"


def test_round_trip():
    for seconds in (1, 60, 61, 3599, 3600, 86399, 86400, 90061, 1000000):
        assert parse_duration(format_duration(seconds)) == seconds


def test_format_rejects_negative():
    with pytest.raises(ValueError, match="negative duration"):
        format_duration(-1)
