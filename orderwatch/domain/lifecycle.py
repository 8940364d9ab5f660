"""The canonical order lifecycle (CONTRACT §2) and its configurable state machine.

Statuses are interned strings so the hot path compares them by identity-fast equality and
every order record shares the same few string objects.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

CREATED = sys.intern("created")
DEPOSIT_PAID = sys.intern("deposit_paid")
PAID = sys.intern("paid")
ALLOCATED = sys.intern("allocated")
LABEL_PRINTED = sys.intern("label_printed")
SHIPPED = sys.intern("shipped")
IN_TRANSIT = sys.intern("in_transit")
DELIVERED = sys.intern("delivered")
COMPLETED = sys.intern("completed")
CANCELLED = sys.intern("cancelled")
REFUND_REQUESTED = sys.intern("refund_requested")
REFUNDED = sys.intern("refunded")
CLOSED = sys.intern("closed")

FORWARD: tuple[str, ...] = (
    CREATED,
    DEPOSIT_PAID,
    PAID,
    ALLOCATED,
    LABEL_PRINTED,
    SHIPPED,
    IN_TRANSIT,
    DELIVERED,
    COMPLETED,
)
STATUSES: tuple[str, ...] = (*FORWARD, CANCELLED, REFUND_REQUESTED, REFUNDED, CLOSED)
TERMINAL: frozenset[str] = frozenset({COMPLETED, CANCELLED, REFUNDED, CLOSED})
BEFORE_SHIPPING: frozenset[str] = frozenset({CREATED, DEPOSIT_PAID, PAID, ALLOCATED, LABEL_PRINTED})
# Non-terminal statuses reached after (at least a deposit) payment: a refund may be requested.
AFTER_PAYMENT: frozenset[str] = frozenset(
    {DEPOSIT_PAID, PAID, ALLOCATED, LABEL_PRINTED, SHIPPED, IN_TRANSIT, DELIVERED}
)
# Statuses that end an order's need for a warehouse (they close a paid_without_wms gap).
CLOSING: frozenset[str] = frozenset({CANCELLED, REFUNDED, CLOSED})

_CANONICAL = {s: s for s in STATUSES}


def canonical(name: str) -> str | None:
    """The interned canonical status for `name`, or None when it is not a canonical status."""
    return _CANONICAL.get(name)


def default_transitions() -> dict[str, set[str]]:
    """The default machine: forward path with skips, cancel/close before shipping, refunds."""
    allowed: dict[str, set[str]] = {s: set() for s in STATUSES}
    for i, frm in enumerate(FORWARD):
        allowed[frm].update(FORWARD[i + 1 :])
    for frm in BEFORE_SHIPPING:
        allowed[frm].update({CANCELLED, CLOSED})
    for frm in AFTER_PAYMENT:
        allowed[frm].add(REFUND_REQUESTED)
    # From refund_requested: refunded, or back to where it came from (checked dynamically).
    allowed[REFUND_REQUESTED].add(REFUNDED)
    return allowed


class StateMachine:
    """Which status changes are legal; `refund_requested` may also return to its origin."""

    __slots__ = ("_allowed", "_any_origin", "_no_return")

    def __init__(
        self, transitions: Mapping[str, Iterable[str]], no_return: Iterable[str] = ()
    ) -> None:
        self._allowed: dict[str, frozenset[str]] = {
            frm: frozenset(tos) for frm, tos in transitions.items()
        }
        # statuses a refund request may not return to (forbidden refund_requested -> X)
        self._no_return = frozenset(no_return)
        # for an order first seen in refund_requested: any status a refund may be requested from
        self._any_origin = frozenset(
            frm for frm, tos in self._allowed.items() if REFUND_REQUESTED in tos
        ).difference(self._no_return)

    @classmethod
    def build(
        cls,
        add: Mapping[str, Iterable[str]] | None = None,
        remove: Mapping[str, Iterable[str]] | None = None,
    ) -> StateMachine:
        """The default machine with operator-configured additions and removals."""
        allowed = default_transitions()
        for frm, tos in (add or {}).items():
            allowed[frm].update(tos)
        for frm, tos in (remove or {}).items():
            allowed[frm].difference_update(tos)
        return cls(allowed, (remove or {}).get(REFUND_REQUESTED, ()))

    def allowed(self, frm: str, to: str, refund_origin: str | None = None) -> bool:
        """True when `frm -> to` is legal (`refund_origin`: status before refund_requested,
        None when the order was first seen in it and where it came from is unknown)."""
        if to in self._allowed.get(frm, ()):
            return True
        if frm != REFUND_REQUESTED:
            return False
        if refund_origin is None:
            return to in self._any_origin
        return to == refund_origin and to not in self._no_return

    def next_statuses(self, frm: str) -> frozenset[str]:
        """Statuses reachable from `frm` in one legal step (without the dynamic refund return)."""
        return self._allowed.get(frm, frozenset())
