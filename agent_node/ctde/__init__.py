"""Centralized training, decentralized execution: agents act, a learner node trains.

- `client.py`  the agent's side: acts here, streams transitions, takes the newest parameters
- `learner.py`  the learner node's core (joint rows, mixer updates, replay), sans sockets
- `capability.py`  the node-side part (agent_node/capability.py)

The learner node's process is agent_node/learner_node.py.
"""
