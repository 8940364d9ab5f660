"""Amounts as exact integer cents (a Decimal only when finer than a cent).

An int of cents is a quarter of a Decimal's memory, compares exactly, and "299.0", "299.00"
and 299 all become 29900.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import MAX_PREC, Context, Decimal, localcontext

Money = int | Decimal

# Exact: the default context keeps 28 digits, and rounded "299.0000000000000000000000000001"
# to 29900 cents, equal to a payable of 299.
_EXACT = Context(prec=MAX_PREC)
_HUNDRED = Decimal(100)


def to_cents(amount: Decimal) -> Money:
    cents = _EXACT.multiply(amount, _HUNDRED)
    whole = cents.to_integral_value()
    return int(whole) if cents == whole else cents


def exact_sum(amounts: Iterable[Money]) -> Money:
    """The sum, exact (plain `sum` rounds Decimals to the default context's 28 digits)."""
    with localcontext(_EXACT):
        return sum(amounts)


def show(cents: Money) -> str:
    """`29900` -> `299.00`; `-3780` -> `-37.80`."""
    if type(cents) is int:
        sign = "-" if cents < 0 else ""
        whole, part = divmod(abs(cents), 100)
        return f"{sign}{whole}.{part:02d}"
    return format(_EXACT.divide(cents, _HUNDRED), "f")  # never an exponent: `4E-17`
