"""Simulated nginx access logs (CONTRACT §1 ``access_log``) and the ``callback_storm`` traffic.

Baseline traffic is a Poisson process at ``access_logs_per_second`` (simulated time) over a fixed
route mix; latencies are log-normal per route and a small share of replies are 4xx/5xx. During a
``callback_storm`` window the ``/api/pay/callback`` route gets a second Poisson process at 19x its
baseline rate (so x20 in total), and every callback request in the window is slow (1-5 s) or fails
(504 from the gateway timeout, some 502/503). Access logs carry no order_id; they are stamped by
nginx in Beijing time (``+08:00``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from random import Random
from typing import Final

from orderwatch.simulate.model import Context, Event, Mark
from orderwatch.simulate.scenarios import CALLBACK_STORM, PAY_CALLBACK_ROUTE, WindowSchedule

#: (route, method, service, share of requests, median latency ms, log-normal sigma).
ROUTES: Final[tuple[tuple[str, str, str, float, float, float], ...]] = (
    ("/api/order/query", "GET", "order-service", 0.30, 18.0, 0.6),
    ("/api/inventory/check", "GET", "inventory-service", 0.25, 12.0, 0.5),
    ("/api/order/create", "POST", "order-service", 0.20, 55.0, 0.5),
    (PAY_CALLBACK_ROUTE, "POST", "pay-callback-service", 0.15, 35.0, 0.5),
    ("/api/cart/add", "POST", "cart-service", 0.10, 20.0, 0.5),
)
#: Share of the pay-callback route in the baseline mix (the storm multiplies it).
PAY_CALLBACK_SHARE: Final = next(r[3] for r in ROUTES if r[0] == PAY_CALLBACK_ROUTE)
#: Storm multiplier of the callback route's QPS.
STORM_FACTOR: Final = 20
_ERROR_STATUSES: Final = (400, 404, 429, 500, 502)
#: Access logs are produced one simulated second at a time.
_TICK_MS: Final = 1_000


class AccessLogs:
    """Builds access-log events; shared by the baseline and the storm streams."""

    def __init__(self, ctx: Context, rng: Random, storm: WindowSchedule | None) -> None:
        self._ctx = ctx
        self._rng = rng
        self._storm = storm
        self._cum: list[float] = []
        acc = 0.0
        for route in ROUTES:
            acc += route[3]
            self._cum.append(acc / sum(r[3] for r in ROUTES))

    def _event(self, ts: int, route: int, stormy: bool) -> tuple[Event, Mark | None]:
        path, method, service, _, median, sigma = ROUTES[route]
        rng = self._rng
        mark: Mark | None = None
        if stormy:
            mark = (CALLBACK_STORM, PAY_CALLBACK_ROUTE)
            u = rng.random()
            if u < 0.35:
                status, latency = 504, 5_000.0 + rng.random() * 60.0
            elif u < 0.5:
                status, latency = (502 if u < 0.42 else 503), 1_000.0 + rng.random() * 4_000.0
            else:
                status, latency = 200, 1_000.0 + rng.random() * 4_000.0
        else:
            latency = median * math.exp(sigma * rng.gauss(0.0, 1.0))
            u = rng.random()
            if u < 0.004:
                status = _ERROR_STATUSES[int(u * 1_250)]
            elif u < 0.006:
                status = 500
            else:
                status = 200
        event: Event = {
            "type": "access_log",
            "event_id": self._ctx.event_id("acc"),
            "ts": self._ctx.fmt_local(ts),
            "route": path,
            "method": method,
            "status": status,
            "latency_ms": round(latency, 1),
            "service": service,
        }
        return event, mark

    def baseline(self, start_ms: int, per_second: float) -> Iterator[int]:
        """Endless baseline traffic over the route mix, one simulated second per step."""
        out = self._ctx.out
        rng = self._rng
        storm = self._storm
        rate_per_ms = per_second / 1_000.0
        cum = self._cum
        last = len(cum) - 1
        pay_route = next(i for i, r in enumerate(ROUTES) if r[0] == PAY_CALLBACK_ROUTE)
        clock = start_ms + rng.expovariate(rate_per_ms)
        tick = start_ms
        while True:
            tick += _TICK_MS
            while clock < tick:
                ts = int(clock)
                u = rng.random()
                route = 0
                while route < last and u >= cum[route]:
                    route += 1
                stormy = route == pay_route and storm is not None and storm.active(ts)
                event, mark = self._event(ts, route, stormy)
                out.append((ts, event, mark))
                clock += rng.expovariate(rate_per_ms)
            yield tick

    def storm_extra(self, per_second: float) -> Iterator[int]:
        """The extra callback requests of every storm window (19x the route's baseline)."""
        if self._storm is None or per_second <= 0.0:
            return
        out = self._ctx.out
        rng = self._rng
        pay_route = next(i for i, r in enumerate(ROUTES) if r[0] == PAY_CALLBACK_ROUTE)
        rate_per_ms = per_second * PAY_CALLBACK_SHARE * (STORM_FACTOR - 1) / 1_000.0
        for begin, end in self._storm.windows():
            yield begin
            clock = begin + rng.expovariate(rate_per_ms)
            tick = begin
            while tick < end:
                tick = min(tick + _TICK_MS, end)
                while clock < tick:
                    ts = int(clock)
                    event, mark = self._event(ts, pay_route, True)
                    out.append((ts, event, mark))
                    clock += rng.expovariate(rate_per_ms)
                yield tick
