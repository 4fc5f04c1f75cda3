"""# The one-step non-monotonic matrix game (`nonmonotonic_matrix_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.nonmonotonic import parallel_env` |
| Layout | `agent_0` and `agent_1`, `Discrete(3)` each, one step: the one-step 3 x 3 game of `matrix_game.py` (its table: observation, state, reward) |

The example of Rashid et al. 2020, "Weighted QMIX: Expanding Monotonic Value Function
Factorisation for Deep Multi-Agent Reinforcement Learning" (NeurIPS, arXiv 2006.10800):

               agent 1:   0     1     2
    agent 0: 0            8   -12   -12
             1          -12     0     0
             2          -12     0     0

The optimum (0, 0) pays 8, but an agent that moves off it alone is punished by 12: the value of an
agent's action depends on the other's, which a monotonic factorisation cannot represent.

What theory says under uniform data (every joint action equally often, epsilon = 1):

- **VDN** fits Q_tot = Q_0(u_0) + Q_1(u_1) by least squares, whose unique minimizer is the
  additive projection Q_tot(a, b) = row mean(a) + column mean(b) - grand mean
  (`additive_projection`): -6.22 at (0, 0), -4.89 on the rest of the first row and column, -3.56
  on the 2 x 2 block of zeros. Its greedy joint action lies in that block (payoff 0).
- **QMIX** minimizes the same squared error over monotonic mixings, which puts the optimum's
  weight 1/9 against the punishments; the paper shows that its greedy joint action is not (0, 0).
- **Weighted QMIX** (centrally or optimistically weighted) recovers (0, 0); not implemented here.

The matrix-game machinery is documented in `env_server/envs/matrix_game.py`.

## Arguments

```python
parallel_env(render_mode=None)
```

## Version history

- v0: first version.
"""

from __future__ import annotations

import numpy as np

from env_server.envs.matrix_game import MatrixGameEnv, Stage

PAYOFF = ((8, -12, -12), (-12, 0, 0), (-12, 0, 0))
OPTIMAL_RETURN = 8.0


def additive_projection(payoff) -> np.ndarray:
    """The least-squares fit of `payoff` by a sum f(row) + g(column) under uniform weights: row
    mean + column mean - grand mean (what VDN learns from uniform data)."""
    payoff = np.asarray(payoff, dtype=np.float64)
    return payoff.mean(axis=1, keepdims=True) + payoff.mean(axis=0, keepdims=True) - payoff.mean()


def empirical_additive_fit(actions, rewards, num_actions: int = 3) -> np.ndarray:
    """The least-squares fit f(u_0) + g(u_1) of `rewards` (R,) over the joint `actions` (R, 2) drawn:
    what VDN fits when it fits these rows exactly. Equal to `additive_projection` only when every
    joint action was drawn equally often; uniformly *drawn* actions never quite are."""
    actions = np.asarray(actions, dtype=np.int64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 2 or len(actions) != len(rewards):
        raise ValueError(f"expected actions (R, 2) and rewards (R,), got {actions.shape} and {rewards.shape}")
    design = np.zeros((len(rewards), 2 * num_actions))
    design[np.arange(len(rewards)), actions[:, 0]] = 1.0
    design[np.arange(len(rewards)), num_actions + actions[:, 1]] = 1.0
    coefficients = np.linalg.lstsq(design, rewards, rcond=None)[0]
    return coefficients[:num_actions, None] + coefficients[None, num_actions:]


def parallel_env(render_mode: str | None = None) -> MatrixGameEnv:
    """A new `nonmonotonic_matrix_v0` environment (PettingZoo's factory convention)."""
    return MatrixGameEnv("nonmonotonic_matrix_v0", [Stage("matrix", payoff=PAYOFF)], render_mode=render_mode)
