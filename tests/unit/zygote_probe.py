"""Run by tests/unit/test_zygote.py as a node forked by the zygote: prints what it sees."""

import json
import os
import random
import sys

import numpy as np

print(json.dumps({
    "argv": sys.argv[1:],
    "ppid": os.getppid(),
    "pgid_is_pid": os.getpgid(0) == os.getpid(),
    "comm": open("/proc/self/comm").read().strip(),
    "random": random.random(),
    "numpy": float(np.random.rand()),
    "env": os.environ.get("PROBE_VALUE"),
    "name": __name__,
}))
sys.exit(int(sys.argv[1]))
