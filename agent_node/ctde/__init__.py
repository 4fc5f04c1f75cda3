"""Centralized training, decentralized execution: agents act, a learner node trains.

- `client.py`  the agent's side: acts here, streams transitions, takes the newest parameters
- `learner.py`  the learner node's core (joint rows, mixer updates, replay), sans sockets
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks,
  the learner node it adds

The learner node's process is agent_node/learner_node.py.
"""
