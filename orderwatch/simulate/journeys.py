"""Order journeys as small state machines: one phase function per step of an order's life.

A phase ``phase(j, ctx, now)`` runs when the order's next step is due (``now``). It appends the
step's events to the shared ``ctx.out`` list, each ``(true time in ms, event dict, ground-truth
mark or None)`` with a time at or after ``now`` (and at most a few minutes after it), sets
``j.phase`` to the next phase and returns when that one is due, or returns None when the order is
finished. Between steps an order is just its :class:`~orderwatch.simulate.model.Journey` (a few
hundred bytes), so hours of waiting for the next carrier scan cost no pending events.

Healthy timings (CONTRACT §2-§3 example rules and a tighter demo config both stay silent):

=====================================  ===============================================
callback ``success`` after ``created``  5 s - 3 min
order ``paid`` after the callback       0.2 - 20 s (15 %: the callback comes 1-4 s after)
``allocated`` + WMS outbound            30 s - 4 min after ``paid``
``label_printed``                       1 - 8 min after allocation
WMS picked/packed/shipped, order        within 10 - 40 min after allocation
``shipped`` and the ``collected`` scan
``in_transit`` scans                    every 20 - 90 min (order ``in_transit`` at the first)
``out_for_delivery`` + ``delivered``    3 - 12 h after shipping
``completed``                           1 - 6 h after delivery
unpaid: ``closed``                      10 - 15 min after ``created``
presale: balance callback               1 - 4 min after ``deposit_paid``
=====================================  ===============================================

Fault scenarios bend these steps (see :data:`orderwatch.simulate.scenarios.SCENARIOS`).
"""

from __future__ import annotations

from random import Random

from orderwatch.simulate.model import (
    CALLBACK_AFTER_PAID_SHARE,
    CANCEL_ALLOCATED,
    CANCEL_PAID,
    EXCEPTION_SCAN_SHARE,
    FAILED_ATTEMPT_SHARE,
    MISMATCH_CENTS,
    PRESALE,
    REFUND_EARLY,
    REFUND_RETURN,
    UNPAID,
    Context,
    Journey,
    Mark,
)
from orderwatch.simulate.scenarios import (
    ALLOCATION_BACKLOG,
    AMOUNT_MISMATCH,
    CALLBACK_DELAY,
    DOUBLE_SHIP,
    DUPLICATE_CALLBACK,
    DUPLICATE_PAYMENT,
    LOGISTICS_STALL,
    NAIVE_TIMESTAMP,
    SHIP_WITHOUT_TRACKING,
    STATUS_JUMP,
    UNPAID_SHIPMENT,
    WMS_PUSH_LOST,
    WRONG_OFFSET,
)
from orderwatch.simulate.timefmt import HOUR_MS as H
from orderwatch.simulate.timefmt import MINUTE_MS as M
from orderwatch.simulate.timefmt import SECOND_MS as S
from orderwatch.simulate.timefmt import beijing_as_utc

#: Faults whose signature is the successful payment callback itself.
_MARK_ON_CALLBACK = frozenset(
    {AMOUNT_MISMATCH, WRONG_OFFSET, WMS_PUSH_LOST, CALLBACK_DELAY, DUPLICATE_CALLBACK}
)
_WRONG_OFFSET_FMT = beijing_as_utc()


def _u(rng: Random, lo: int, hi: int) -> int:
    """A uniform integer duration in [lo, hi)."""
    return lo + int(rng.random() * (hi - lo))


def _callback_time(ctx: Context, after: int) -> int:
    """When the gateway's callback for a payment made ``after`` + 5 s..3 min arrives."""
    tp = after + _u(ctx.rng, 5 * S, 3 * M)
    storm = ctx.plan.storm
    if storm is not None and storm.active(tp):
        tp += _u(ctx.rng, 2 * M, 8 * M)  # 回调积压: callbacks queue behind the storm
    return tp


# ---- creation and payment ------------------------------------------------------------------


def start(j: Journey, ctx: Context, t0: int) -> int | None:
    """``created``; then the payment (or the unpaid close, or the unpaid WMS push)."""
    rng = ctx.rng
    buyer = f"U{int(rng.random() * 1e9):09d}"
    created = ctx.order(t0, j, "created", amount=ctx.amount(j), buyer_id=buyer)
    ctx.out.append((t0, created, None))
    if j.kind == UNPAID:
        j.phase = _close_unpaid
        return t0 + _u(rng, 10 * M, 15 * M)
    if j.fault == UNPAID_SHIPMENT:
        j.phase = _unpaid_push
        return t0 + _u(rng, 1 * M, 3 * M)
    if j.kind == PRESALE:
        j.phase = _presale_deposit
        return _callback_time(ctx, t0)
    if j.fault == CALLBACK_DELAY:
        tp = t0 + _u(rng, 6 * M, 15 * M)
        paid_at = tp + _u(rng, 6 * M, 8 * M)  # the `paid` update lags the callback
    else:
        tp = _callback_time(ctx, t0)
        if rng.random() < CALLBACK_AFTER_PAID_SHARE:
            paid_at = tp - _u(rng, 1 * S, 4 * S)
        else:
            paid_at = tp + _u(rng, 200, 20 * S)
    if rng.random() < FAILED_ATTEMPT_SHARE:  # a first attempt fails, the buyer pays again
        t = t0 + S + int((min(tp, paid_at) - t0 - S) * rng.random())
        ctx.out.append((t, ctx.payment(t, j, ctx.pay_no(), "failed", j.cents), None))
    j.t1, j.t2 = tp, paid_at
    j.phase = _pay
    return min(tp, paid_at)


def _close_unpaid(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "closed"), None))
    return None


def _pay(j: Journey, ctx: Context, now: int) -> int | None:
    """The successful callback (t1) and the `paid` order event (t2), with payment faults."""
    rng = ctx.rng
    out = ctx.out
    f = j.fault
    tp, paid_at = j.t1, j.t2
    j.pay_no = pay_no = ctx.pay_no()
    cents = j.cents
    if f == AMOUNT_MISMATCH:
        diff = MISMATCH_CENTS if rng.random() < 0.8 else _u(rng, 1, 1_000)
        cents = cents - diff if cents > diff + 100 else cents + diff
    j.paid_cents = cents
    mark: Mark | None = (f, j.order_id) if f in _MARK_ON_CALLBACK else None
    fmt = _WRONG_OFFSET_FMT if f == WRONG_OFFSET else None
    callback = ctx.payment(tp, j, pay_no, "success", cents, fmt)
    out.append((tp, callback, mark))
    if f == DUPLICATE_CALLBACK:
        for _ in range(1 + int(rng.random() * 3)):
            out.append((tp, dict(callback), mark))
    if f == DUPLICATE_PAYMENT:
        t = tp + _u(rng, 5 * S, 2 * M)
        out.append((t, ctx.payment(t, j, ctx.pay_no(), "success", cents), (f, j.order_id)))
    out.append((paid_at, ctx.order(paid_at, j, j.paid_status, amount=ctx.amount(j)), None))
    return _after_paid(j, ctx, paid_at)


def _presale_deposit(j: Journey, ctx: Context, now: int) -> int | None:
    """预售: the deposit (10-30 % of the payable amount, whole yuan) and `deposit_paid`."""
    rng = ctx.rng
    deposit = (j.cents * _u(rng, 10, 31) // 100) // 100 * 100
    deposit = min(max(deposit, 100), j.cents // 2)
    ctx.out.append((now, ctx.payment(now, j, ctx.pay_no(), "success", deposit), None))
    t = now + _u(rng, 200, 20 * S)
    ctx.out.append((t, ctx.order(t, j, "deposit_paid", amount=ctx.amount(j)), None))
    j.paid_cents = deposit
    j.phase = _presale_balance
    return _callback_time(ctx, t + 1 * M - 5 * S)  # balance 1-4 min after deposit_paid


def _presale_balance(j: Journey, ctx: Context, now: int) -> int | None:
    """The balance payment (the rest of the payable amount) and `paid`."""
    balance = j.cents - j.paid_cents
    ctx.out.append((now, ctx.payment(now, j, ctx.pay_no(), "success", balance), None))
    paid_at = now + _u(ctx.rng, 200, 20 * S)
    ctx.out.append((paid_at, ctx.order(paid_at, j, "paid", amount=ctx.amount(j)), None))
    return _after_paid(j, ctx, paid_at)


def _after_paid(j: Journey, ctx: Context, paid_at: int) -> int:
    """Choose what follows `paid`: an early refund or cancel, or the push to the WMS."""
    rng = ctx.rng
    if j.kind == REFUND_EARLY:
        j.phase = _refund_early
        return paid_at + _u(rng, 1 * M, 3 * M)
    if j.kind == CANCEL_PAID:
        j.phase = _cancel_paid
        return paid_at + _u(rng, 1 * M, 3 * M)
    j.phase = _allocate
    if j.fault == WMS_PUSH_LOST:
        return paid_at + _u(rng, 3 * H, 6 * H)  # 漏发: a manual re-push hours later
    if j.fault == CALLBACK_DELAY:
        return paid_at + _u(rng, 30 * S, 90 * S)
    return paid_at + _u(rng, 30 * S, 4 * M)


def _refund_early(j: Journey, ctx: Context, now: int) -> int | None:
    done = now + _u(ctx.rng, 1 * M, 4 * M)
    ctx.out.append((now, ctx.order(now, j, "refund_requested"), None))
    t = done - _u(ctx.rng, 200, 20 * S)
    ctx.out.append((t, ctx.payment(t, j, j.pay_no, "refunded", j.paid_cents), None))
    ctx.out.append((done, ctx.order(done, j, "refunded"), None))
    return None


def _cancel_paid(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "cancelled"), None))
    t = now + _u(ctx.rng, 10 * S, 2 * M)
    ctx.out.append((t, ctx.payment(t, j, j.pay_no, "refunded", j.paid_cents), None))
    return None


def _unpaid_push(j: Journey, ctx: Context, now: int) -> int | None:
    """An ERP bug pushes the unpaid order to the WMS, which starts picking it."""
    j.wno = ctx.wms_order_no()
    ctx.out.append((now, ctx.wms(now, j, "outbound_created", j.wno), (UNPAID_SHIPMENT, j.order_id)))
    t = now + _u(ctx.rng, 2 * M, 6 * M)
    ctx.out.append((t, ctx.wms(t, j, "picked", j.wno), None))
    j.phase = _unpaid_close
    return now + _u(ctx.rng, 18 * M, 27 * M)


def _unpaid_close(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "closed"), None))
    t = now + _u(ctx.rng, 10 * S, 2 * M)
    ctx.out.append((t, ctx.wms(t, j, "cancelled", j.wno), None))
    return None


# ---- warehouse -----------------------------------------------------------------------------


def _allocate(j: Journey, ctx: Context, now: int) -> int | None:
    """待分仓: `allocated` and the WMS outbound order; label and ship times are decided here."""
    rng = ctx.rng
    backlog = ctx.plan.backlog
    slow = backlog is not None and backlog.active(now)
    j.wno = ctx.wms_order_no()
    mark: Mark | None = (ALLOCATION_BACKLOG, j.order_id) if slow else None
    ctx.out.append((now, ctx.order(now, j, "allocated", warehouse=j.warehouse), mark))
    t = now + _u(rng, 100, 3 * S)
    mark = (NAIVE_TIMESTAMP, j.order_id) if j.fault == NAIVE_TIMESTAMP else None
    ctx.out.append((t, ctx.wms(t, j, "outbound_created", j.wno), mark))
    if j.kind == CANCEL_ALLOCATED:
        j.phase = _cancel_allocated
        return now + _u(rng, 1 * M, 5 * M)
    label_at = now + (_u(rng, 10 * M, 30 * M) if slow else _u(rng, 1 * M, 8 * M))
    lo = max(10 * M, label_at - now + 4 * M)
    j.t1, j.t2 = label_at, now + _u(rng, lo, max(35 * M, lo + 5 * M))
    j.phase = _label
    return label_at


def _cancel_allocated(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "cancelled", warehouse=j.warehouse), None))
    t = now + _u(ctx.rng, 1 * S, 30 * S)
    ctx.out.append((t, ctx.wms(t, j, "cancelled", j.wno), None))
    t = now + _u(ctx.rng, 10 * S, 2 * M)
    ctx.out.append((t, ctx.payment(t, j, j.pay_no, "refunded", j.paid_cents), None))
    return None


def _label(j: Journey, ctx: Context, now: int) -> int | None:
    """已打单: `label_printed`; picking starts 15-45 % of the way to shipping."""
    ctx.out.append((now, ctx.order(now, j, "label_printed", warehouse=j.warehouse), None))
    j.phase = _pick
    return now + int((j.t2 - now) * (0.15 + 0.3 * ctx.rng.random()))


def _pick(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.wms(now, j, "picked", j.wno), None))
    j.phase = _pack
    return now + int((j.t2 - now) * (0.2 + 0.6 * ctx.rng.random()))


def _pack(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.wms(now, j, "packed", j.wno), None))
    j.phase = _ship
    return j.t2


def _ship(j: Journey, ctx: Context, now: int) -> int | None:
    """已揽收: order `shipped` with the waybill, WMS `shipped`, the carrier's `collected` scan."""
    rng = ctx.rng
    out = ctx.out
    f = j.fault
    j.tracking = tracking = ctx.tracking_no(j.carrier)
    if f == SHIP_WITHOUT_TRACKING:
        shipped = ctx.order(now, j, "shipped", warehouse=j.warehouse, carrier=j.carrier)
        out.append((now, shipped, (f, j.order_id)))
    else:
        shipped = ctx.order(
            now, j, "shipped", warehouse=j.warehouse, tracking_no=tracking, carrier=j.carrier
        )
        out.append((now, shipped, None))
    t = now + _u(rng, 0, 60 * S)
    out.append((t, ctx.wms(t, j, "shipped", j.wno), None))
    if f == DOUBLE_SHIP:  # 双击发货: a second waybill seconds later
        t = now + _u(rng, 2 * S, 30 * S)
        second = ctx.tracking_no(j.carrier)
        twice = ctx.order(
            t, j, "shipped", warehouse=j.warehouse, tracking_no=second, carrier=j.carrier
        )
        out.append((t, twice, (f, j.order_id)))
    collected = now + _u(rng, 30 * S, 5 * M)
    out.append((collected, ctx.logistics(collected, j, "collected", tracking), None))
    j.pay_no = j.pay_no if j.kind == REFUND_RETURN else ""  # no longer needed
    j.wno = ""
    j.t1 = now  # shipped at
    j.phase = _first_scan
    return collected + _u(rng, 20 * M, 90 * M)


# ---- transit and delivery ------------------------------------------------------------------


def _first_scan(j: Journey, ctx: Context, now: int) -> int | None:
    """The first `in_transit` scan; the order follows within 2 min. Delivery is planned here."""
    rng = ctx.rng
    ctx.out.append((now, ctx.logistics(now, j, "in_transit", j.tracking), None))
    t = now + _u(rng, 1 * S, 2 * M)
    stall = j.fault == LOGISTICS_STALL
    ctx.out.append(
        (t, ctx.order(t, j, "in_transit"), (LOGISTICS_STALL, j.order_id) if stall else None)
    )
    if stall:  # 物流停滞: nothing at all about the order for 50-80 h
        resume = t + _u(rng, 50 * H, 80 * H)
        deliver_at = resume + _u(rng, 2 * H, 8 * H)
        j.t2 = deliver_at
        j.t1 = deliver_at - _u(rng, 20 * M, 80 * M)
        j.phase = _scan
        return resume
    deliver_at = j.t1 + _u(rng, 3 * H, 12 * H)
    j.t2 = deliver_at
    j.t1 = deliver_at - _u(rng, 20 * M, 80 * M)  # out for delivery
    return _next_scan(j, ctx, now)


def _next_scan(j: Journey, ctx: Context, now: int) -> int:
    nxt = now + _u(ctx.rng, 20 * M, 90 * M)
    if nxt >= j.t1 - 5 * M:
        j.phase = _out_for_delivery
        return j.t1
    j.phase = _scan
    return nxt


def _scan(j: Journey, ctx: Context, now: int) -> int | None:
    node = "exception" if ctx.rng.random() < EXCEPTION_SCAN_SHARE / 5 else "in_transit"
    ctx.out.append((now, ctx.logistics(now, j, node, j.tracking), None))
    return _next_scan(j, ctx, now)


def _out_for_delivery(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.logistics(now, j, "out_for_delivery", j.tracking), None))
    if j.kind == REFUND_RETURN:
        j.phase = _returned
        return now + _u(ctx.rng, 1 * H, 4 * H)
    j.phase = _deliver
    return j.t2


def _deliver(j: Journey, ctx: Context, now: int) -> int | None:
    """已签收: the carrier's `delivered` scan, then the order's `delivered`."""
    ctx.out.append((now, ctx.logistics(now, j, "delivered", j.tracking), None))
    t = now + _u(ctx.rng, 10 * S, 10 * M)
    ctx.out.append((t, ctx.order(t, j, "delivered"), None))
    j.tracking = ""
    if j.fault == STATUS_JUMP:
        j.phase = _status_jump
        return t + _u(ctx.rng, 1 * M, 10 * M)
    j.phase = _complete
    return t + _u(ctx.rng, 1 * H, 6 * H)


def _status_jump(j: Journey, ctx: Context, now: int) -> int | None:
    """A stale ERP sync sets `paid` after `delivered`; the OMS reconciliation fixes it."""
    ctx.out.append((now, ctx.order(now, j, "paid", source="erp"), (STATUS_JUMP, j.order_id)))
    t = now + _u(ctx.rng, 2 * M, 10 * M)
    ctx.out.append((t, ctx.order(t, j, "delivered"), None))
    j.phase = _complete
    return t + _u(ctx.rng, 1 * H, 6 * H)


def _complete(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "completed"), None))
    return None


def _returned(j: Journey, ctx: Context, now: int) -> int | None:
    """Delivery refused: the parcel goes back (`returned`), the buyer asks for a refund."""
    ctx.out.append((now, ctx.logistics(now, j, "returned", j.tracking), None))
    j.phase = _refund_request
    return now + _u(ctx.rng, 5 * M, 1 * H)


def _refund_request(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.order(now, j, "refund_requested"), None))
    j.phase = _refund_done
    return now + _u(ctx.rng, 1 * H, 6 * H)


def _refund_done(j: Journey, ctx: Context, now: int) -> int | None:
    ctx.out.append((now, ctx.payment(now, j, j.pay_no, "refunded", j.paid_cents), None))
    t = now + _u(ctx.rng, 200, 20 * S)
    ctx.out.append((t, ctx.order(t, j, "refunded"), None))
    return None
