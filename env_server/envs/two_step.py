"""# The two-step game (`two_step_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.two_step import parallel_env` |
| Agents | `agent_0`, `agent_1` |
| Actions | `Discrete(2)` each (A = 0, B = 1) |
| Observation | `Box(0, 1, (3,))`: one-hot of the stage (1, 2A, 2B); zeros after the end |
| Global state | the same one-hot (`state()`) |
| Reward | the team payoff split equally: each agent gets payoff / 2 |
| Episode | 2 steps, then termination |

The game of Rashid et al. 2018, "QMIX: Monotonic Value Function Factorisation for Deep
Multi-Agent Reinforcement Learning" (ICML, arXiv 1803.11485), section 5. In the first stage
nothing is paid and agent 0's action alone picks the second stage: A leads to 2A, B to 2B.

    stage 2A (every joint action pays 7)    stage 2B
               agent 1: A   B                         agent 1: A   B
    agent 0: A        7     7                agent 0: A        0   1
             B        7     7                         B        1   8

The optimum is (B, *) then (B, B): 8. Stage 2B's payoffs are not a sum of one term per agent, so
VDN (Q_tot = Q_0 + Q_1) cannot represent them: its best additive fit of 2B ranks below 7, and a
VDN learner takes 2A (7). QMIX's monotonic mixing, conditioned on the state, can represent both
stages and finds 8. The paper trains both under uniform exploration (epsilon = 1) and reports
the learned Q_tot tables (`PAPER_Q_TOT` below, with gamma = 0.99: stage 1's values are 0.99 times
the best of the stage they lead to).

The matrix-game machinery (observation, split reward, episode end) is documented in
`env_server/envs/matrix_game.py`.

## Arguments

```python
parallel_env(render_mode=None)
```

## Version history

- v0: first version.
"""

from __future__ import annotations

from env_server.envs.matrix_game import MatrixGameEnv, Stage

STAGE_1 = Stage("1", payoff=((0, 0), (0, 0)), next_stage=(("2A", "2A"), ("2B", "2B")))
STAGE_2A = Stage("2A", payoff=((7, 7), (7, 7)))
STAGE_2B = Stage("2B", payoff=((0, 1), (1, 8)))
STAGES = [STAGE_1, STAGE_2A, STAGE_2B]
OPTIMAL_RETURN = 8.0

# The learned Q_tot(s, u_0, u_1) the paper prints for the two-step game (section 5: (a) VDN,
# (b) QMIX), rows agent 0's action, columns agent 1's. Figures quoted from the paper.
PAPER_Q_TOT = {
    "vdn": {
        "1": ((6.94, 6.94), (6.35, 6.36)),
        "2A": ((6.99, 7.02), (6.99, 7.02)),
        "2B": ((-1.87, 2.31), (2.33, 6.51)),
    },
    "qmix": {
        "1": ((6.93, 6.93), (7.92, 7.92)),
        "2A": ((7.00, 7.00), (7.00, 7.00)),
        "2B": ((0.00, 1.00), (1.00, 8.00)),
    },
}


def parallel_env(render_mode: str | None = None) -> MatrixGameEnv:
    """A new `two_step_v0` environment (PettingZoo's factory convention)."""
    return MatrixGameEnv("two_step_v0", STAGES, render_mode=render_mode)
