"""Moving frames between processes: the zmq transport, its keys and limits, emulated links, shared
memory.

- `transport.py`     ZeroMQ transport: the one module that imports zmq.
- `auth.py`          Who may talk to a run: its keys, how a node proves who it is, and the limits on
                     what it accepts.
- `links.py`         Per-link network emulation: delay distributions, jitter, loss, duplication,
                     reordering, a bandwidth cap, partitions; and the per-link counters both
                     transports report.
- `shm_lockstep.py`  The same-host lockstep through shared memory: packed bodies in a mapped
                     segment, a wake-up outside zmq.
"""
