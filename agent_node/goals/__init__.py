"""Goals (agents.goals): goal-conditioned agents pick, agree on and share each episode's goal.

- `config.py`  agents.goals (its typed schema; imported without torch)
- `modules.py`  the goal modules: how an agent picks a goal (uniform, learning progress,
  negotiated, the supervisor's draw)
- `session.py`  the sans-IO goal session beside the goal-conditioned learner
- `capability.py`  the node-side part (agent_node/capability.py)
- `description.py`  what the run knows of it (agent_node/registry.py): its section, checks,
  the external supervisor node it adds
- `supervisor.py`  `python -m agent_node.goals.supervisor`: the external goal supervisor's node

AMIGo's cell goals have a room of their own, agent_node/amigo/, which this one runs
(`selection: amigo`) and which imports nothing from here.
"""
