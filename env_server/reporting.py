"""What the lockstep reports, a part of the env server (env_server/part.py): the defaulted
actions in the metrics every status period, and the figures of each status report."""

from __future__ import annotations

from env_server.part import ServerPart, ServerServices


class LockstepReport(ServerPart):
    name = "report"

    def __init__(self, server: ServerServices) -> None:
        self.server = server

    def metrics(self) -> dict[str, float]:
        """`env/default_actions/<agent>`: the steps each agent's action was defaulted because it was
        dead, paused or late from its own compute (the env never waits on a protocol when talking
        takes env steps), every possible agent listed, 0 included."""
        barrier = self.server.barrier
        counts = barrier.default_actions
        return {f"env/default_actions/{agent}": float(counts.get(agent, 0)) for agent in barrier.possible_agents}

    def status(self) -> dict[str, float]:
        """The status report's extra figures: env steps per second (over the copies), the missing
        and stale actions, and the refused requests."""
        server, barrier = self.server, self.server.barrier
        elapsed = max(1e-9, server.clock() - server.counters.started_at)
        return {
            "env/steps_per_s": server.counters.steps * server.envs.num_copies / elapsed,
            "env/missing_actions": float(barrier.missing_actions),
            "env/stale_actions": float(barrier.stale_actions),
            "env/rejected_requests": float(server.counters.rejected_requests),
        }
