"""# The climbing game (`climbing_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.climbing import parallel_env` |
| Layout | `agent_0` and `agent_1`, `Discrete(3)` each, one step: the one-step 3 x 3 game of `matrix_game.py` (its table: observation, state, reward) |

The game of Claus & Boutilier 1998, "The Dynamics of Reinforcement Learning in Cooperative
Multiagent Systems" (AAAI), section 4:

               agent 1:   0     1     2
    agent 0: 0           11   -30     0
             1          -30     7     6
             2            0     0     5

The optimum (0, 0) pays 11, but each of its actions risks -30 when the other agent explores, so
learners that average over the partner's exploration (independent Q-learners, and value
factorisations fitted to exploratory data) are pulled to the safe actions: *relative
overgeneralization*. Claus & Boutilier's independent learners under decaying exploration end in
the suboptimal equilibria (1, 1) (7) or (2, 2) (5), not in (0, 0); methods built to find 11 on
this matrix are optimistic or lenient (e.g. lenient learners, Panait et al. 2006).

The matrix-game machinery is documented in `env_server/envs/matrix_game.py`.

## Arguments

```python
parallel_env(render_mode=None)
```

## Version history

- v0: first version.
"""

from __future__ import annotations

from env_server.envs.matrix_game import MatrixGameEnv, Stage

PAYOFF = ((11, -30, 0), (-30, 7, 6), (0, 0, 5))
OPTIMAL_RETURN = 11.0


def parallel_env(render_mode: str | None = None) -> MatrixGameEnv:
    """A new `climbing_v0` environment (PettingZoo's factory convention)."""
    return MatrixGameEnv("climbing_v0", [Stage("matrix", payoff=PAYOFF)], render_mode=render_mode)
