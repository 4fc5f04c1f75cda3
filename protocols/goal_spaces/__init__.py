"""Goal spaces that the env server and the agents share (goal_lines, cell grids).

- `goal_space.py`  The goal space of goal_lines (ALGORITHMS.md section 2), shared by the environment
                   and the agents.
- `cell_space.py`  Cells of a square grid as goals (AMIGo, ALGORITHMS.md section 3), shared by env
                   and agents.
"""
