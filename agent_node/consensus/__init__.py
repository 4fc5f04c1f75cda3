"""Consensus: an agent averages a world model or its policy with its neighbours.

- `session.py`  one averaging run between two lockstep steps (sans-IO)
- `subjects.py`  what is averaged: a world model beside the learner, OG-MARL's model, the policy
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks
- `report.py`  its section of `orchestrate report`
- `shared_policy.py`  `python -m agent_node.consensus.shared_policy`: average the final copies
"""
