"""Parley's wire format and protocol engines.

`PROTOCOL_VERSION` is defined here and nowhere else; every envelope carries it and a receiver
rejects any other version. This package never imports torch, and imports zmq only in
`protocols.net.transport`.

Its rooms (each room's __init__.py lists its modules):

- `codec/`        Typed messages and their bytes: the envelope, the message registry, packed
                  lockstep bodies, spaces.
- `net/`          Moving frames between processes: the zmq transport, its keys and limits, emulated
                  links, shared memory.
- `engines/`      The sans-IO peer engines (protocols/engines/engine.py) and the topology they run
                  on.
- `sim/`          The network simulator and its fault plans, which drive the engines of
                  protocols/engines/.
- `run/`          What every process of a run shares: settings, its resolved config, the control
                  channel, config errors.
- `storage/`      Files that survive a kill: atomic sealed files, JSON lines, damaged-state
                  handling, metrics.
- `goal_spaces/`  Goal spaces that the env server and the agents share (goal_lines, cell grids).
- `seeds.py` stays at the top: every room uses it.
"""

PROTOCOL_VERSION = 2  # 2: the three-frame envelope (head, body, buffers; protocols/codec/wire.py)
