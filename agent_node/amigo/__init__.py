"""AMIGo (agents.goals.selection: amigo): a student agent and its own teacher, whose goals are cells.

- `session.py`  the sans-IO session: the teacher proposes a cell, the student pursues it
- `teacher.py`  the paper's network teacher over the observed grid (MiniGrid tasks)

Its settings are agents.goals.amigo (agent_node/goals/config.py) and the goals' capability
(agent_node/goals/capability.py) runs it; the tabular teacher is in agent_node/goals/modules.py.
"""
