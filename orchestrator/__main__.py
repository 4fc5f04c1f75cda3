"""`python -m orchestrator ...` is `orchestrate ...`."""

import sys

from orchestrator import honour_sigint

honour_sigint()  # before the imports below, which take a second on a loaded machine
try:
    from orchestrator.cli import main
except KeyboardInterrupt:
    # Ctrl-C while the CLI is still importing (a second on a loaded machine): nothing has been
    # created or launched yet, so stop quietly with the shell's code for SIGINT.
    print("orchestrate: interrupted before launch", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
