import pytest
from wrapping import wrap

TEXT = "The quick brown fox jumps over the lazy dog"


def test_greedy_fill():
    assert wrap(TEXT, 10) == ["The quick", "brown fox", "jumps over", "the lazy", "dog"]


def test_a_word_of_exactly_width_fits():
    assert wrap("abcde fghij", 5) == ["abcde", "fghij"]
    assert wrap("ab cd", 5) == ["ab cd"]


def test_whitespace_is_collapsed():
    assert wrap("  one \t two\nthree  ", 80) == ["one two three"]


def test_long_words_are_cut():
    assert wrap("a abcdefghij k", 4) == ["a", "abcd", "efgh", "ij k"]
    assert wrap("abcdefgh", 4) == ["abcd", "efgh"]


def test_paragraphs():
    text = "one two three\n\nfour five\n   \n\n six"
    assert wrap(text, 7) == ["one two", "three", "", "four", "five", "", "six"]


def test_empty_text():
    assert wrap("", 10) == []
    assert wrap("   \n\n  \t", 10) == []


@pytest.mark.parametrize("width", [0, -3])
def test_width_must_be_positive(width):
    with pytest.raises(ValueError, match="width must be at least 1"):
        wrap("abc", width)


def test_lines_never_exceed_width_and_keep_every_word():
    for width in range(5, 40):
        lines = wrap(TEXT, width)
        assert all(0 < len(line) <= width for line in lines)
        assert " ".join(lines) == TEXT
