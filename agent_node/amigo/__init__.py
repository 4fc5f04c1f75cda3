"""AMIGo (agents.goals.selection: amigo): a student agent and its own teacher, whose goals are cells.

- `config.py`  agents.goals.amigo (its typed schema and its run checks; imported without torch)
- `teacher.py`  the rewards, the t* curriculum, the tabular teacher and the uniform baseline (numpy)
- `network_teacher.py`  the paper's network teacher over the observed grid (MiniGrid tasks; torch)
- `novelty.py`  BeBold's count-based novelty, an intrinsic reward for the student
- `session.py`  the sans-IO session: the teacher proposes a cell, the student pursues it

The goals' capability (agent_node/goals/capability.py) runs it; the goal-conditioned agent it
drives is agent_node/goal_agent.py's. Nothing here imports agent_node/goals/.
"""
