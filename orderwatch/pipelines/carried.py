"""Alerts left firing before this start, handed to the shards of their orders.

The alert store outlives the order state: without `state.recovery` (or resuming from an older
snapshot) a restart begins with empty shards while the store still holds what fired. A shard
re-raises what its input raises again, but an alert whose order's events are gone from the
input (the log rotated away meanwhile) would have nothing to end it. So the store's firing
alerts go, through the dataflow, to the shard that owns each order (on whichever process it
runs), which settles them as its watermark passes each one (`ShardTracker.carry`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from orderwatch.domain.alert import AlertChange
from orderwatch.pipelines.route import shard_keys, shard_of


@dataclass
class CarriedAlerts:
    """The alerts one shard's orders had firing when this run began."""

    key: str
    alerts: list[AlertChange]
    since: int  # how far the runs before had read their input (`AlertStore.progress`)


def by_shard(
    alerts: list[AlertChange], shards: int, since: int = 0
) -> list[tuple[str, CarriedAlerts]]:
    """`(shard key, CarriedAlerts)` for each shard that owns an order of `alerts` (every
    firing alert is about an order: one-shots are never carried, they never fire on)."""
    keys = shard_keys(shards)
    grouped: dict[str, list[AlertChange]] = defaultdict(list)
    for alert in alerts:
        order_id = alert.labels.get("order_id")
        if order_id is not None:
            grouped[keys[shard_of(order_id, shards)]].append(alert)
    return [(key, CarriedAlerts(key, group, since)) for key, group in grouped.items()]


class _Once(StatelessSourcePartition[tuple[str, CarriedAlerts]]):
    def __init__(self, items: list[tuple[str, CarriedAlerts]]) -> None:
        self._items: list[tuple[str, CarriedAlerts]] | None = items

    def next_batch(self) -> list[tuple[str, CarriedAlerts]]:
        if self._items is None:
            raise StopIteration
        items, self._items = self._items, None
        return items


class CarriedSource(DynamicSource[tuple[str, CarriedAlerts]]):
    """Emits the carried alerts once, on the cluster's first worker (process 0 holds the
    alert store); bytewax routes each shard's group to the worker that owns the shard."""

    def __init__(self, alerts: list[AlertChange], shards: int, since: int = 0) -> None:
        self._items = by_shard(alerts, shards, since)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSourcePartition[tuple[str, CarriedAlerts]]:
        return _Once(self._items if worker_index == 0 else [])
