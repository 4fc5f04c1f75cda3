"""The `agents.goals` section: how goal-conditioned agents pick, agree on and share goals.

ALGORITHMS.md section 2. A run whose agents use the goal-conditioned learner
(`learner.kind: goal_dqn`) must have this section, and a run with this section must use that
learner: the section configures `agent_node/goals/session.py`, which the node runs beside it.

    agents:
      learner: {kind: goal_dqn, her_strategy: future}
      goals:
        selection: negotiation        # uniform | learning_progress | p_aligned | negotiation
        goal_set: cooperative         # which goal_lines goals may be pursued
        num_landmarks: 6              # must equal env.kwargs.num_landmarks (goal_lines default 6)
        negotiation: {round_timeout_s: 0.5}   # protocol: naming_game (default) | team_flood
        hindsight: {timeout_s: 1.0}   # share achieved goals after each episode (null: no sharing)

AMIGo (ALGORITHMS.md section 3) is the other kind of goal: each agent's own teacher proposes grid
cells, on the treasure_room grid or a MiniGrid task (minigrid_v0) (`agent_node/amigo/`; its
settings and their checks are `agent_node/amigo/config.py`):

    agents:
      learner: {kind: goal_dqn, her_strategy: none}
      goals:
        selection: amigo
        amigo: {grid_size: 9, max_steps: 40}   # must equal env.kwargs.size and max_steps

What is refused (validation errors, not silent no-ops): hindsight sharing with
`her_strategy: none` (the partners' goals would never be used); the naming game's settings
(num_messages, temperature, learning_rate, update_every_episodes) with `protocol: team_flood`,
which learns no code; with `amigo`, any goal-lines
field set to other than its default (goal_set, num_landmarks, beta, p, lp_*, inner, negotiation, supervisor, hindsight,
freeze_when_rewarded); and, at the run level
(`goal_run_problems`, called by the orchestrator's run schema): for goal-lines selections an env other than goal_lines,
several env copies, evaluation episodes, infos without `achieved_goals`, negotiation without an
episode-start hold long enough for the negotiation's rounds (or the supervisor's timeout), a hold
without negotiating or supervised agents, a supervisor in the team on a topology where a team member
may not be its neighbour (it needs a full topology; an external supervisor does not).

No torch here: the CLI validates a run config in a fraction of a second.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_node.amigo.config import AmigoSettings, amigo_run_problems
from protocols.run.config_errors import changed_from_default

GOAL_LINES_NAMES = ("goal_lines_v0", "env_server.envs.goal_lines:parallel_env")
GOAL_LINES_DEFAULTS = {"num_landmarks": 6, "beta": 2.0}
# The GoalsConfig fields that only goal-lines selections read (refused when set with amigo).
GOAL_LINES_FIELDS = ("goal_set", "num_landmarks", "beta", "p", "lp_window", "lp_epsilon", "inner", "negotiation",
                     "supervisor", "hindsight", "freeze_when_rewarded", "paid_by")


# The naming game's own settings: refused with the team flood, which reads none of them.
NAMING_GAME_FIELDS = ("num_messages", "temperature", "learning_rate", "update_every_episodes")


class NegotiationSettings(BaseModel):
    """How negotiating agents agree on a goal. `naming_game`: the goal-coordination game
    (protocols/engines/negotiation.py; defaults are the reference's), a leader's message decoded by each
    agent's learned matrix. `team_flood`: every agent's (priority, goal) proposal flooded for the
    team graph's diameter and the same deterministic pick on every agent
    (protocols/engines/team_negotiation.py): team-wide agreement on any connected graph, assuming the
    agents share the goals' names (goal_lines' indices), learning nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["naming_game", "team_flood"] = "naming_game"
    # team_flood only: flooding rounds beyond the team graph's diameter. Each one lets a table
    # lost in an earlier round arrive still (in the simulator at 30% loss on a ring of 6, the
    # whole team agreed in 0.72 of negotiations with 0 extra rounds, 0.95 with 1, 0.99 with 2);
    # the hold must cover (diameter + extra_rounds) x round_timeout_s.
    extra_rounds: int = Field(0, ge=0)
    # Each flooding round ends when every team neighbour's proposal arrived or after this long;
    # a negotiation of `rounds` rounds ends within rounds * round_timeout_s.
    round_timeout_s: float = Field(0.5, gt=0, allow_inf_nan=False)
    # The same deadline in env steps, when talking takes them (protocols.talk: env_steps).
    round_timeout_steps: int = Field(5, ge=1)
    num_messages: int = Field(30, ge=1)
    temperature: float = Field(30.0, gt=0)
    learning_rate: float = Field(0.1, gt=0, le=1)
    # M is updated over the (goal, message, reward) triples of this many episodes at once; unset:
    # 4 x the goals an agent may choose (60 at L = 6 cooperative), so that every goal is drawn
    # several times per batch (protocols/engines/negotiation.py says why and what smaller batches did).
    update_every_episodes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _read_by_the_protocol(self) -> NegotiationSettings:
        if self.protocol == "team_flood" and (set_here := changed_from_default(self, NAMING_GAME_FIELDS)):
            raise ValueError(f"{', '.join(set_here)}: naming-game settings, which protocol 'team_flood' does not read; "
                             "remove them (the team flood learns no code)")
        if self.protocol == "naming_game" and self.extra_rounds != 0:
            raise ValueError(f"extra_rounds: set only with protocol 'team_flood' (the naming game floods for the "
                             f"diameter), got {self.extra_rounds}")
        return self


class SupervisorSettings(BaseModel):
    """The supervisor (protocols/engines/supervision.py), which draws one goal uniformly per episode for
    the whole team. `external: true`: a node of its own (`supervisor`, agent_node/goals/supervisor.py)
    that every team member asks; false: the team's smallest node id draws and tells the others
    (no extra process; the topology must be full). A member waits `timeout_s` for the goal, then
    pursues a draw of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    external: bool = True
    timeout_s: float = Field(0.5, gt=0, allow_inf_nan=False)


class HindsightSettings(BaseModel):
    """Sharing the goals an episode achieved with the partners (protocols/engines/hindsight.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A partner's report that has not arrived this long after the episode ended is given up on
    # (counted as missing); the episode is stored with the goals known by then.
    timeout_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    # The same in env steps, when talking takes them (protocols.talk: env_steps).
    timeout_steps: int = Field(10, ge=1)


class GoalsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # How each episode's goal is chosen: independently and uniformly (the lower bound), by
    # learning progress, p-aligned (a shared stream, no messages), or by negotiation with the
    # partners of the episode (the goal-coordination game).
    # "supervisor": one goal for the whole team per episode, assigned over the wire by a supervisor
    # node of the run (or the team's smallest node id; the upper bound; protocols/engines/supervision.py).
    # "amigo": each agent's own teacher proposes grid cells (the `amigo` settings; treasure_room or minigrid_v0).
    selection: Literal["uniform", "learning_progress", "p_aligned", "negotiation", "supervisor", "amigo"]
    # goal_lines goals the agent may pursue: the L individual ones, the L(L-1)/2 cooperative
    # ones, or all.
    goal_set: Literal["cooperative", "individual", "all"] = "cooperative"
    num_landmarks: Literal[3, 6] = 6
    beta: float = Field(2.0, gt=0)
    # p_aligned only: the probability that the team pursues one shared goal.
    p: float | None = Field(None, ge=0, le=1)
    # learning_progress only (and the own draw of negotiation when inner is learning_progress).
    lp_window: int = Field(100, ge=2)
    lp_epsilon: float = Field(0.2, ge=0, le=1)
    # negotiation only: how the agent draws its own goal (kept when it leads or hears nothing);
    # null means uniform.
    inner: Literal["uniform", "learning_progress"] | None = None
    negotiation: NegotiationSettings | None = None
    supervisor: SupervisorSettings | None = None
    # null: no sharing (HER, if the learner's her_strategy is not none, uses the agent's own
    # achieved goals only).
    hindsight: HindsightSettings | None = None
    # amigo only: the teacher, the student's reward and the grid (defaults when omitted).
    amigo: AmigoSettings | None = None
    # Once rewarded, the agent stays where it is for the rest of the episode (the reference's
    # agents are done once rewarded; goal_lines cannot end one agent's episode early when the
    # goals are the agents' own, so the agent stops itself).
    freeze_when_rewarded: bool = True
    # Who computes an agent's goal reward: the agent, from its `achieved_goals` infos ("agent"),
    # or the env, told each episode's goal in goal.ready ("env", the reference's arrangement: its
    # env pays its agents). "env" is what goal_lines' view "own" needs (an agent there cannot see
    # a cooperative goal achieved); it needs an episode-start hold, in which the goal reaches the
    # env before the first step. Under "env", hindsight relabels with the cooperative goals that
    # the partners' reports imply (protocols/goal_spaces/goal_space.py complete_events).
    paid_by: Literal["agent", "env"] = "agent"

    @model_validator(mode="before")
    @classmethod
    def _negotiation_defaults(cls, data: Any) -> Any:
        # Negotiation without settings runs with the reference's (resolved.yaml then shows them).
        if isinstance(data, dict):
            for selection in ("negotiation", "supervisor", "amigo"):
                if data.get("selection") == selection and data.get(selection) is None:
                    data = {**data, selection: {}}
        return data

    @model_validator(mode="after")
    def _implemented(self) -> GoalsConfig:
        if self.selection == "amigo":
            if goal_lines_set := changed_from_default(self, GOAL_LINES_FIELDS):
                raise ValueError(
                    f"{', '.join(goal_lines_set)}: goal-lines settings, which selection 'amigo' (cell goals) does not read; "
                    "remove them (AMIGo's settings go under goals.amigo)"
                )
            return self
        if self.amigo is not None:
            raise ValueError(f"amigo: set only with selection 'amigo', got selection {self.selection!r}")
        if self.selection == "p_aligned" and self.p is None:
            raise ValueError("p: selection 'p_aligned' needs p (the probability that the team shares one goal), got none")
        if self.selection != "p_aligned" and self.p is not None:
            raise ValueError(f"p: only selection 'p_aligned' uses p, got selection {self.selection!r}")
        if self.selection != "negotiation" and self.negotiation is not None:
            raise ValueError(f"negotiation: set only with selection 'negotiation', got selection {self.selection!r}")
        if self.selection != "supervisor" and self.supervisor is not None:
            raise ValueError(f"supervisor: set only with selection 'supervisor', got selection {self.selection!r}")
        if self.selection != "negotiation" and self.inner is not None:
            raise ValueError(f"inner: the own-goal draw of negotiation; selection is {self.selection!r}")
        return self


def goal_run_problems(
    goals: GoalsConfig | None,
    learner_kind: str,
    her_strategy: str | None,
    env: Any,
    *,
    topology_diameter: int | None,
    topology_complete: bool = True,
    talk_in_steps: bool = False,
) -> list[str]:
    """What is wrong with a run's goal settings across sections, one problem per line, each
    starting with its field path (the orchestrator's run schema reports them); `env` is the run's
    env section (env_server/config.py `EnvConfig`)."""
    problems: list[str] = []
    if goals is None:
        if learner_kind == "goal_dqn":
            problems.append("agents.goals: learner kind 'goal_dqn' needs a goals section (how each episode's goal is chosen), got none")
        if env.episode_start_hold_s > 0:
            problems.append(
                f"env.episode_start_hold_s: expected 0 without goal-negotiating agents (the server would wait "
                f"{env.episode_start_hold_s} s for goal.ready at every episode start), got {env.episode_start_hold_s}"
            )
        return problems
    if learner_kind != "goal_dqn":
        problems.append(f"agents.learner.kind: agents.goals needs the goal-conditioned learner 'goal_dqn', got {learner_kind!r}")
    if goals.selection == "amigo":
        return problems + amigo_run_problems(goals.amigo, her_strategy, env)
    if goals.hindsight is not None and her_strategy == "none":
        problems.append(
            "agents.goals.hindsight: sharing achieved goals needs HER to use them; set agents.learner.her_strategy "
            "to 'final' or 'future', or hindsight to null"
        )
    if env.name not in GOAL_LINES_NAMES:
        problems.append(f"env.name: agents.goals runs on goal_lines ({' or '.join(GOAL_LINES_NAMES)}), got {env.name!r}")
        return problems
    for key in ("num_landmarks", "beta"):
        env_value = env.kwargs.get(key, GOAL_LINES_DEFAULTS[key])
        if env_value != getattr(goals, key):
            problems.append(f"agents.goals.{key}: expected env.kwargs.{key} ({env_value}), got {getattr(goals, key)}")
    if env.num_copies != 1:
        problems.append(f"env.num_copies: expected 1 with agents.goals (one goal per agent and episode), got {env.num_copies}")
    if env.kwargs.get("view") == "own" and goals.paid_by != "env":
        problems.append(
            "agents.goals.paid_by: env.kwargs.view 'own' shows an agent no cooperative goal, so it cannot compute its "
            "reward; expected 'env' (the env pays the goal named in goal.ready), got 'agent'"
        )
    if goals.paid_by == "env" and not env.episode_start_hold_s > 0:
        problems.append(
            "env.episode_start_hold_s: agents.goals.paid_by 'env' sends each episode's goal to the env before its first "
            f"step, in the episode-start hold; expected > 0, got {env.episode_start_hold_s}"
        )
    if env.forward_infos != "all" and "achieved_goals" not in env.forward_infos:
        problems.append(
            f"env.forward_infos: expected 'achieved_goals' (goal agents compute their rewards from it), got {env.forward_infos}"
        )
    if env.eval_every_steps is not None:
        problems.append(
            "env.eval_every_steps: evaluation episodes of goal-conditioned agents are not implemented (no goal is chosen "
            f"for them); expected null, got {env.eval_every_steps}"
        )
    if talk_in_steps:
        return problems + _talk_in_steps_problems(goals, env)
    if goals.selection == "negotiation":
        rounds = max(1, topology_diameter or 1) + goals.negotiation.extra_rounds
        needed = rounds * goals.negotiation.round_timeout_s
        if env.episode_start_hold_s < needed:
            problems.append(
                f"env.episode_start_hold_s: negotiation needs the episode start held for its rounds, at least "
                f"{rounds} round(s) x {goals.negotiation.round_timeout_s} s = {needed} s; got {env.episode_start_hold_s}"
            )
    elif goals.selection == "supervisor":
        if env.episode_start_hold_s < goals.supervisor.timeout_s:
            problems.append(
                f"env.episode_start_hold_s: the supervisor's assignment needs the episode start held for its timeout, "
                f"at least {goals.supervisor.timeout_s} s; got {env.episode_start_hold_s}"
            )
        if not goals.supervisor.external and not topology_complete:
            problems.append(
                "topology.kind: a supervisor in the team (supervisor.external: false) needs every team member to be "
                "its neighbour; expected a full topology (or 2 agents), or an external supervisor"
            )
    elif env.episode_start_hold_s > 0 and goals.paid_by != "env":
        problems.append(
            f"env.episode_start_hold_s: only selections 'negotiation' and 'supervisor', or goals paid by the env, wait "
            f"for goal.ready; expected 0 with {goals.selection!r}, got {env.episode_start_hold_s}"
        )
    return problems


def _talk_in_steps_problems(goals: GoalsConfig, env: Any) -> list[str]:
    """Talking in env steps nothing holds an episode's start: what needs the hold is refused."""
    problems = []
    population, playing = env.kwargs.get("population"), env.kwargs.get("active_per_episode")
    if population is not None and playing is not None and playing < population:
        problems.append(f"env.kwargs.active_per_episode: with protocols.talk: env_steps an agent cannot learn who plays "
                        f"an episode (only a held start's announcement says it); expected every agent of the "
                        f"population to play ({population}), got {playing}")
    if env.episode_start_hold_s > 0:
        problems.append(f"env.episode_start_hold_s: protocols.talk: env_steps holds no episode start (the team "
                        f"negotiates while it acts); expected 0, got {env.episode_start_hold_s}")
    if goals.selection == "supervisor":
        problems.append("agents.goals.selection: 'supervisor' assigns each goal before the episode's first step, in a "
                        "hold that talking in env steps does not have; use negotiation, or protocols.talk: free")
    if goals.paid_by == "env":
        problems.append("agents.goals.paid_by: 'env' names each goal to the env before the episode's first step, in a "
                        "hold that talking in env steps does not have; use 'agent', or protocols.talk: free")
    return problems

