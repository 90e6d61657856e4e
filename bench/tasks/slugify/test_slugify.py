import pytest
from slugify import slugify


def test_basic_title():
    assert slugify("Hello, World!") == "hello-world"


def test_accents_become_ascii():
    assert slugify("Crème Brûlée à la carte") == "creme-brulee-a-la-carte"


def test_runs_collapse_and_ends_are_trimmed():
    assert slugify("  --Many   spaces__and--dashes-- ") == "many-spaces-and-dashes"


def test_apostrophes_are_removed():
    assert slugify("Don't stop me now") == "dont-stop-me-now"


def test_custom_separator():
    assert slugify("Hello World 2024", sep="_") == "hello_world_2024"


def test_max_length_never_ends_with_separator():
    assert slugify("The quick brown fox", max_length=10) == "the-quick"
    assert slugify("The quick brown fox", max_length=11) == "the-quick-b"
    assert slugify("abc", max_length=10) == "abc"


def test_non_latin_is_dropped_and_empty_stays_empty():
    assert slugify("Ünïcödé ★ 日本 test") == "unicode-test"
    assert slugify("!!!") == ""
    assert slugify("") == ""


def test_bad_max_length():
    with pytest.raises(ValueError):
        slugify("abc", max_length=0)
