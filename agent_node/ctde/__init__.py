"""Centralized training, decentralized execution: agents act, a learner node trains.

- `client.py`  the agent's side: acts here, streams transitions, takes the newest parameters
- `learner.py`  the learner node's core (joint rows, mixer updates, replay), sans sockets
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks,
  the learner node it adds
- `learner_node.py`  `python -m agent_node.ctde.learner_node`: the learner node's process (the
  orchestrator's `learner` role) around the core, with its persistence
"""
