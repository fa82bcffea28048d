"""`python -m edge.cli`: the `edge-face` command, as the tests and benchmarks start the daemon."""

import sys

from edge.cli import main

sys.exit(main())
