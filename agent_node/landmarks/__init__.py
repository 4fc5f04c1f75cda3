"""The main job's landmarks: the team agrees who covers which landmark, and shares rows after.

- `config.py`  agents.landmarks (its typed schema; imported without torch)
- `session.py`  the sans-IO session: flooding, the assignment, relabelled and partners' rows
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks
- `report.py`  its section of `orchestrate report`
"""
