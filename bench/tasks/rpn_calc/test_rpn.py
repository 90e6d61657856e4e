import pytest
from rpn import evaluate


def test_basic_arithmetic():
    assert evaluate("3 4 + 2 *") == 14
    assert evaluate("5 2 -") == 3
    assert evaluate("2 3 ^") == 8
    assert evaluate("42") == 42


def test_types_of_results():
    result = evaluate("2 3 +")
    assert result == 5 and isinstance(result, int)
    assert evaluate("1 2 /") == 0.5
    assert isinstance(evaluate("4 2 /"), float)


def test_negative_and_decimal_numbers():
    assert evaluate("-3 4 *") == -12
    assert evaluate("2.5 -0.5 +") == 2.0
    assert evaluate("  1   2\t+ \n") == 3


def test_longer_expression():
    assert evaluate("5 1 2 + 4 * + 3 -") == 14
    assert evaluate("2 3 4 * +  10 2 / -") == 9.0


ERRORS = [
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("1 x +", "unknown token 'x'"),
    ("1 +", "not enough operands for '+'"),
    ("*", "not enough operands for '*'"),
    ("1 2", "too many operands"),
    ("1 0 /", "division by zero"),
]


def test_errors_have_exact_messages():
    for expression, message in ERRORS:
        with pytest.raises(ValueError) as info:
            evaluate(expression)
        assert str(info.value) == message, expression


def test_division_by_zero_is_not_a_zero_division_error():
    with pytest.raises(ValueError, match="division by zero"):
        evaluate("5 0.0 /")
