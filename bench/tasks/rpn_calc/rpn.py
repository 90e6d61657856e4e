"""Reverse Polish notation calculator."""

import operator
from collections.abc import Callable

Number = int | float


def _divide(a: Number, b: Number) -> float:
    if b == 0:
        raise ValueError("division by zero")
    return a / b


OPERATORS: dict[str, Callable[[Number, Number], Number]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
    "^": operator.pow,
}


def _number(token: str) -> Number:
    try:
        return float(token) if "." in token else int(token)
    except ValueError:
        raise ValueError(f"unknown token {token!r}") from None


def evaluate(expression: str) -> Number:
    tokens = expression.split()
    if not tokens:
        raise ValueError("empty expression")
    stack: list[Number] = []
    for token in tokens:
        if token in OPERATORS:
            if len(stack) < 2:
                raise ValueError(f"not enough operands for {token!r}")
            right = stack.pop()
            left = stack.pop()
            stack.append(OPERATORS[token](left, right))
        else:
            stack.append(_number(token))
    if len(stack) > 1:
        raise ValueError("too many operands")
    return stack[0]
