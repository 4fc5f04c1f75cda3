"""`python -m orchestrator ...` is `orchestrate ...`."""

import sys

from orchestrator.cli import main

sys.exit(main())
