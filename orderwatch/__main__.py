"""`python -m orderwatch` is the `orderwatch` command."""

from orderwatch.cli import entry

entry()
