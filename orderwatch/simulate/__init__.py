"""Deterministic, realistic order-health traffic: orders, payments, WMS, logistics, access logs.

Pure Python (no bytewax). ``Simulator(start_ms=...).events()`` yields CONTRACT §1 events in
arrival order, with the fault scenarios of :data:`SCENARIOS` injected on request and their ground
truth in ``Simulator.injected``; :func:`write_jsonl` writes them as JSON lines.
"""

from orderwatch.simulate.generator import Simulator, write_jsonl
from orderwatch.simulate.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "Simulator", "write_jsonl"]
