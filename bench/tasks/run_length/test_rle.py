import pytest
from rle import decode, encode


def test_encode_basic():
    assert encode("aaabcc") == "3a1b2c"
    assert encode("abc") == "1a1b1c"


def test_encode_long_runs_and_other_characters():
    assert encode("a" * 12 + "b") == "12a1b"
    assert encode("  !!é") == "2 2!1é"


def test_empty():
    assert encode("") == ""
    assert decode("") == ""


def test_encode_rejects_digits():
    with pytest.raises(ValueError, match="digit"):
        encode("abc1")


def test_decode():
    assert decode("3a1b2c") == "aaabcc"
    assert decode("12x1y") == "x" * 12 + "y"
    assert decode("2 1!") == "  !"


def test_round_trip():
    for text in ("aaabccddddd", "hello  world", "zzzzzzzzzzzzzzzzzzzzzzzzz", "ééé--é"):
        assert decode(encode(text)) == text


def test_decode_rejects_malformed():
    for bad in ("a", "3", "3a4", "0a", "a3b"):
        with pytest.raises(ValueError):
            decode(bad)
