"""Files that survive a kill: atomic sealed files, JSON lines, damaged-state handling, metrics.

- `files.py`          Files written whole, and sealed: the one way Parley writes a file that must
                      survive a kill.
- `jsonlines.py`      Append-only JSON-lines files that hold whole lines or nothing, even when the
                      disk fills.
- `durable_state.py`  What a node does when the state it saved on disk cannot be read back.
- `metrics.py`        Metrics of one node: JSON lines in `nodes/<id>/metrics.jsonl`, mirrored to
                      TensorBoard.
"""
