"""simple_spread_v3 whose `step` raises on its third call: an env server that dies mid-episode
(tests/integration/test_env_server.py serves it with `--env tests.integration.failing_env:parallel_env`)."""

from mpe2 import simple_spread_v3

FAILS_AT_STEP = 3


def parallel_env(**kwargs):
    env = simple_spread_v3.parallel_env(**kwargs)
    step, calls = env.step, []

    def failing_step(actions):
        calls.append(None)
        if len(calls) >= FAILS_AT_STEP:
            raise RuntimeError(f"the env broke on step {len(calls)}")
        return step(actions)

    env.step = failing_step
    return env
