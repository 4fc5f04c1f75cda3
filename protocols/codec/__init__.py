"""Typed messages and their bytes: the envelope, the message registry, packed lockstep bodies,
spaces.

- `errors.py`    Errors raised at the wire boundary.
- `messages.py`  Typed message bodies and the registry that maps `msg_type` strings to them.
- `wire.py`      The envelope: one frame layout for every Parley message (protocol version 2).
- `packed.py`    Packed bodies for the lockstep's hot messages: env.observation and env.action (and
                 the env server's copy-worker requests and results).
- `spaces.py`    Gymnasium spaces as plain maps, so the env server can tell agents what they will
                 see and do.
- `ctde.py`      Messages between agent nodes and a centralized learner node (CTDE).
"""
