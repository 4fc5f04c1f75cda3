"""Goals support, a part of the env server (env_server/part.py): episode starts held for the
agents' goal negotiation, and the goals the env pays.

With `env.episode_start_hold_s` > 0, a training result that starts an episode in some copy is not
broadcast at once: every client hears who plays (`env.episode_start`) and the observation waits
until every claimed agent that plays has sent `goal.ready` for its step, or the hold has passed
(the rules: episode_hold.py). A `goal.ready` that carries goals (`agents.goals.paid_by: env`) has
the env pay them in that episode. The core asks `holds(result, missing)` before it broadcasts a
training result.
"""

from __future__ import annotations

import numpy as np

from env_server.barrier import Refused
from env_server.episode_hold import EpisodeStartHold
from env_server.part import ServerPart, ServerServices
from env_server.vector import BatchedStep
from protocols.codec import messages as m
from protocols.codec.wire import Envelope


class GoalSupport(ServerPart):
    name = "goals"
    handles = (m.GoalReady,)

    def __init__(self, server: ServerServices, hold_s: float) -> None:
        self.server = server
        self.episode_hold = EpisodeStartHold(hold_s)

    def holds(self, result: BatchedStep, missing: list[str]) -> bool:
        """Whether this training result starts an episode that is held (announced now, broadcast
        on its release); False: the core broadcasts it."""
        server, hold = self.server, self.episode_hold
        if server.run_finished or not hold.should_hold(result):
            return False
        active = hold.begin(result, missing, step=server.step, claimed=set(server.barrier.owner), now=server.clock())
        server.barrier.close_step()  # no actions until the observation is out
        announcement = m.EnvEpisodeStart(step=server.step, episode_start=result.episode_start, active=active,
                                         hold_s=hold.hold_s)
        server.send([(identity, announcement) for identity in server.barrier.clients])
        if not hold.held.waiting:  # no claimed agent plays: nobody to wait for
            self._release()
        return True

    def next_deadline(self) -> float | None:
        return self.episode_hold.next_deadline()

    def on_timer(self, now: float) -> None:
        if self.episode_hold.on_timer(now):
            self._release()

    def on_message(self, identity: bytes, envelope: Envelope) -> None:
        request: m.GoalReady = envelope.message
        client = self.server.barrier.client(identity)
        foreign = [a for a in request.agents if a not in client.agents]
        if foreign:
            raise Refused("not_your_agent", f"{client.client_id} does not drive {foreign}")
        if not self.episode_hold.enabled:
            raise Refused("no_episode_hold", "goal.ready needs env.episode_start_hold_s > 0 on the env server")
        if request.goals:
            self._assign_goals(request)
        if self.episode_hold.on_ready(request.agents, request.step):
            self._release()

    def _assign_goals(self, request: m.GoalReady) -> None:
        """The env pays these agents their goals in the held episode (`agents.goals.paid_by: env`).
        Only while that episode's first observation is held: a goal that comes after the
        episode started would be paid for part of it, so it is refused and the agent earns
        nothing this episode."""
        if len(request.goals) != len(request.agents):
            raise Refused("bad_goals", f"goal.ready names {len(request.agents)} agents and {len(request.goals)} goals")
        held = self.episode_hold.held
        if held is None or held.step != request.step:
            raise Refused("late_goals", f"goal.ready for step {request.step} came after that episode started: "
                                        "the env pays no goal in it")
        starting = np.flatnonzero(held.result.episode_start)
        if len(starting) != 1:
            raise Refused("bad_goals", f"paid goals need one starting env copy, got {len(starting)}")
        try:
            self.server.envs.assign_goals(int(starting[0]), dict(zip(request.agents, (int(g) for g in request.goals))))
        except ValueError as error:
            raise Refused("bad_goals", str(error)) from None

    def _release(self) -> None:
        held = self.episode_hold.release()
        self.server.broadcast(held.result, held.missing)
