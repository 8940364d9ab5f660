"""`python -m orderwatch` is the `orderwatch` command."""

import sys

from orderwatch.cli import main

sys.exit(main())
