"""`orderwatch bench`: throughput, memory and latency of orderwatch beside yardsticks (issue 5).

Modules: `run` (the command), `inputs` (mixed and open-orders streams), `measure` (measured
subprocesses, the parse-only loop, percentiles), `launch` (the tiny stdlib-only launcher that
makes peak RSS trustworthy), `latency` (the live daemon run), `report` and `tables` (the JSON,
the ratios and the tables). Nothing is imported here so that `orderwatch` stays light.
"""
