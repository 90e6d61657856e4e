from edit_distance import closest, levenshtein


def test_classic_examples():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("intention", "execution") == 5


def test_empty_and_equal_strings():
    assert levenshtein("", "") == 0
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0


def test_symmetric_and_case_sensitive():
    pairs = [("book", "back"), ("a", "ab"), ("Saturday", "Sunday")]
    assert all(levenshtein(a, b) == levenshtein(b, a) for a, b in pairs)
    assert levenshtein("Saturday", "Sunday") == 3
    assert levenshtein("Abc", "abc") == 1


def test_long_strings():
    a = "ab" * 200
    b = "ba" * 200
    assert levenshtein(a, b) == 2
    assert levenshtein("x" * 300, "y" * 300) == 300


def test_closest_picks_the_nearest():
    words = ["apple", "apply", "ample", "maple"]
    assert closest("appel", words) == "apple"
    assert closest("mapel", words) == "maple"


def test_closest_ties_go_to_the_first_candidate():
    assert closest("cat", ["bat", "cot", "cut"]) == "bat"
    assert closest("cat", ["cut", "bat"]) == "cut"


def test_closest_max_distance_and_no_candidates():
    assert closest("hello", []) is None
    assert closest("hello", ["world", "help"], max_distance=1) is None
    assert closest("hello", ["world", "help"], max_distance=2) == "help"
