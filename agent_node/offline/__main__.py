"""`python -m agent_node.offline`: train offline learners from a recorded dataset (train.py)."""

import sys

from agent_node.offline.train import main

if __name__ == "__main__":
    sys.exit(main())
