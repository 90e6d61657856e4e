import pytest
from word_freq import top_words


def test_counts_and_order():
    text = "the cat and the hat and the bat"
    assert top_words(text, 3) == [("the", 3), ("and", 2), ("bat", 1)]


def test_case_insensitive():
    assert top_words("Apple apple APPLE banana Banana", 5) == [("apple", 3), ("banana", 2)]


def test_ties_are_alphabetical():
    assert top_words("pear fig kiwi fig kiwi pear", 2) == [("fig", 2), ("kiwi", 2)]


def test_what_counts_as_a_word():
    text = "Don't stop: it's 'quoted' e-mail_2024 snake_case x9y"
    assert top_words(text, 20) == [
        ("case", 1),
        ("don't", 1),
        ("e", 1),
        ("it's", 1),
        ("mail", 1),
        ("quoted", 1),
        ("snake", 1),
        ("stop", 1),
        ("x", 1),
        ("y", 1),
    ]


def test_other_alphabets():
    assert top_words("Café café CAFÉ naïve δέλτα ΔΈΛΤΑ", 3) == [
        ("café", 3),
        ("δέλτα", 2),
        ("naïve", 1),
    ]


def test_ignore_words():
    text = "The cat and THE hat and the bat"
    assert top_words(text, 2, ignore=["the", "AND"]) == [("bat", 1), ("cat", 1)]


def test_empty_text_and_bad_n():
    assert top_words("", 3) == []
    assert top_words("... 123 ---", 3) == []
    with pytest.raises(ValueError):
        top_words("a b c", 0)
