"""Offline RL: record a run's transitions, train from the dataset without an env server.

- `datasets.py`  the dataset format (per-agent shards, crash-safe writer, reader)
- `recording.py`  an agent writes the transitions it learns from (agents.record_dataset)
- `train.py`  `python -m agent_node.offline`: CQL / BC per agent shard
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks
"""
