"""Parley's wire format and protocol engines.

`PROTOCOL_VERSION` is defined here and nowhere else; every envelope carries it and a receiver
rejects any other version. This package never imports torch, and imports zmq only in
`protocols.transport`.
"""

PROTOCOL_VERSION = 2  # 2: the three-frame envelope (head, body, buffers; protocols/wire.py)
