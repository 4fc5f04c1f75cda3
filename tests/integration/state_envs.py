"""simple_spread_v3 with an instrumented `state()`, for the env server's `env.state` tests
(tests/integration/test_remote_env.py serves them with `--env tests.integration.state_envs:NAME`).

- `counting`: each agent's infos carry `state_calls`, how many times the server called `state()`
  so far (forwarded to the proxy with the server's default `--forward-infos all`).
- `raising`: `state()` always raises RuntimeError; everything else works.
"""

from mpe2 import simple_spread_v3

STATE_ERROR = "this env has no state right now"


def counting(**kwargs):
    env = simple_spread_v3.parallel_env(**kwargs)
    state, step, calls = env.state, env.step, []

    def counted_state():
        calls.append(None)
        return state()

    def step_reporting_calls(actions):
        observations, rewards, terminated, truncated, infos = step(actions)
        infos = {agent: {**info, "state_calls": len(calls)} for agent, info in infos.items()}
        return observations, rewards, terminated, truncated, infos

    env.state, env.step = counted_state, step_reporting_calls
    return env


def raising(**kwargs):
    env = simple_spread_v3.parallel_env(**kwargs)

    def failing_state():
        raise RuntimeError(STATE_ERROR)

    env.state = failing_state
    return env
