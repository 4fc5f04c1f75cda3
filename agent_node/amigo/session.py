"""The AMIGo session: one student agent and its own teacher, whose goals are grid cells, sans-IO.

ALGORITHMS.md section 3 (AMIGo; Campero et al., arXiv 2006.12122). The node runs it
beside the goal-conditioned learner (`agent_node/algos/goal_dqn.py`) when the run's
`agents.goals.selection` is `amigo` (`agent_node/amigo/config.py`); the env is a cell grid that
reports, every step, the cell each agent stands on (`infos[agent]["cell"]`: treasure_room_v0, or a
MiniGrid task through minigrid_v0). The teacher is a table (`agent_node/amigo/teacher.py` `AmigoTeacher`, open rooms) or,
as in the paper, a network over the observed grid (`agent_node/amigo/network_teacher.py`, minigrid_v0).

How it differs from the goal-lines session (`agent_node/goals/session.py`): a goal is a cell, and it
changes *within* an episode. The teacher proposes a cell at the episode's start and proposes again
whenever the student reaches it; a goal episode ends when the student reaches the goal or the env
episode ends. Nothing goes over the wire: every agent has its own teacher.

Per step (transition `obs, action -> next_obs` with extrinsic reward `r_ext`, the student now on
`cell`, `t` steps since the goal was proposed):
- reached = `cell == goal` (AMIGo: the goal cell's contents changed; on an open grid whose only
  content is the agents, that is the student stepping on it; on MiniGrid, standing on a key's or a
  locked door's cell needs the key picked up or the door opened first, so stepping on the cell
  stands for the change, but a change seen from afar, e.g. a box moved, is not counted);
- the student's reward: `clip(r_ext + r_int, -1, 1) + [r_ext > 0]`, `r_int = 1 - 0.9 t / T_max`
  when reached (`teacher.amigo_student_reward`), plus `novelty_scale` times BeBold's novelty of
  `cell` when `novelty: bebold`;
- the row is stored with the goal the student pursued, and terminates when the goal is reached or
  the env terminated the agent (a truncation bootstraps);
- a reached goal ends its goal episode: the teacher gets `+alpha` if `t >= t*`, `-beta` otherwise,
  `+1` if an extrinsic reward came during it (`teacher.amigo_teacher_reward`), and proposes anew from
  `cell`. The goal still open when the env episode ends is scored as not reached.

The start cell of an episode comes from the observation's first entries (`protocols/goal_spaces/cell_space.py`):
with autoreset, the observation that starts an episode carries the infos of the previous episode's
last step, so the infos cannot tell it. Every later cell comes from the env's infos.

`AmigoStudent` is the core (the benchmark `bench/amigo.py` drives it in process); `AmigoSession`
adapts it to the node's goal-session calls. Without a proposer (`proposer=None`) the core is the
"no goals" baseline: the student is conditioned on a constant goal and learns from the extrinsic
reward alone (plus novelty, if any), through the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np
import torch

from agent_node.amigo.config import AmigoSettings
from agent_node.amigo.network_teacher import NetworkTeacher
from agent_node.amigo.novelty import BeBoldNovelty
from agent_node.amigo.teacher import AmigoTeacher, Curriculum, UniformCells, amigo_student_reward
from agent_node.goal_agent import SessionLearner, build_goal_agent
from agent_node.plugins import GoalSpace
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.goal_spaces.cell_space import cell_features, cell_of_observation, grid_observation_size, manhattan
from protocols.engines.engine import Outgoing
from protocols.seeds import derive_seed

log = logging.getLogger("agent_node.amigo")

NO_GOAL = 0  # the constant goal of the no-goals baseline


class CellStudent(Protocol):
    """What the core needs from the goal-conditioned learner (GoalDQNAgent)."""

    def act(self, obs: np.ndarray, goals: np.ndarray, explore: bool = True) -> np.ndarray: ...

    def observe_rows(self, obs, goals, actions, rewards, next_obs, terminated) -> None: ...


@dataclass
class _EpisodeTally:
    """What one env episode did, for its metrics record."""

    start_cell: int
    proposed: int = 0
    reached: int = 0
    distances: list[int] = field(default_factory=list)  # Manhattan distance from the student to each proposed goal
    steps_to_reach: list[int] = field(default_factory=list)
    teacher_rewards: list[float] = field(default_factory=list)
    extrinsic_return: float = 0.0
    student_return: float = 0.0
    novelty_return: float = 0.0
    steps: int = 0


class AmigoStudent:
    """A student, its proposer (teacher or uniform, or none) and optional BeBold novelty, driven
    transition by transition (see the module docstring)."""

    def __init__(
        self,
        agent: CellStudent,
        proposer: AmigoTeacher | NetworkTeacher | UniformCells | None,
        *,
        size: int,
        max_steps: int,
        novelty: BeBoldNovelty | None = None,
        novelty_scale: float = 1.0,
    ) -> None:
        self.agent = agent
        self.proposer = proposer
        self.size = size
        self.max_steps = max_steps
        self.novelty = novelty
        self.novelty_scale = novelty_scale
        self.goal = NO_GOAL
        self.episode: _EpisodeTally | None = None
        self._cell = -1  # where the student stands now
        self._observation: np.ndarray | None = None  # what it sees now (the network teacher proposes from it)
        self._goal_from = -1  # where it stood when the goal was proposed
        self._steps_since_proposal = 0
        self._extrinsic_in_goal = False

    @property
    def in_episode(self) -> bool:
        return self.episode is not None

    def begin_episode(self, start_cell: int, observation: np.ndarray | None = None) -> None:
        self.episode = _EpisodeTally(start_cell=start_cell)
        self._cell, self._observation = start_cell, observation
        if self.novelty is not None:
            self.novelty.start_episode(start_cell)
        self._propose()

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        return self.agent.act(obs, np.full(len(obs), self.goal), explore=explore)

    def step(self, obs, action, extrinsic: float, next_obs, cell: int, terminated: bool, truncated: bool, *, store: bool = True) -> None:
        """One transition of the episode (`store=False`: a step the node has no row for; its
        reach and rewards still count, nothing is learned from it)."""
        episode = self.episode
        if episode is None:
            raise RuntimeError("a step outside an episode: call begin_episode first")
        t = self._steps_since_proposal + 1
        reached = self.proposer is not None and cell == self.goal
        reward = amigo_student_reward(extrinsic, reached, t, self.max_steps)
        if self.novelty is not None:
            novelty = self.novelty_scale * self.novelty.reward(self._cell, cell)
            reward += novelty
            episode.novelty_return += novelty
        if store:
            self.agent.observe_rows(
                np.asarray(obs)[None], [self.goal], [action], [reward], np.asarray(next_obs)[None], [bool(terminated or reached)]
            )
        episode.steps += 1
        episode.extrinsic_return += float(extrinsic)
        episode.student_return += reward
        self._extrinsic_in_goal |= extrinsic > 0
        self._cell, self._steps_since_proposal, self._observation = cell, t, next_obs
        if reached:
            self._close_goal(reached=True)
            if not (terminated or truncated):
                self._propose()

    def end_episode(self) -> dict[str, float]:
        """The env episode ended: score the open goal as not reached; the episode's record."""
        episode = self.episode
        if episode is None:
            raise RuntimeError("end_episode outside an episode")
        if self.proposer is not None and self._goal_from >= 0:
            self._close_goal(reached=False)
        self.episode = None
        record = {
            "amigo/extrinsic_return": episode.extrinsic_return,
            "amigo/extrinsic_success": float(episode.extrinsic_return > 0),
            "amigo/student_return": episode.student_return,
            "amigo/episode_steps": float(episode.steps),
        }
        if self.novelty is not None:
            record["amigo/novelty_return"] = episode.novelty_return
        if self.proposer is None:
            return record
        record.update({
            "amigo/goals_proposed": float(episode.proposed),
            "amigo/goals_reached": float(episode.reached),
            "amigo/reach_rate": episode.reached / episode.proposed if episode.proposed else 0.0,
            "amigo/goal_distance": float(np.mean(episode.distances)) if episode.distances else 0.0,
        })
        if episode.steps_to_reach:
            record["amigo/steps_to_reach"] = float(np.mean(episode.steps_to_reach))
        if isinstance(self.proposer, (AmigoTeacher, NetworkTeacher)):
            teacher = self.proposer
            record.update({
                "amigo/t_star": float(teacher.t_star),
                "amigo/teacher_updates": float(teacher.updates),
                "amigo/teacher_counter": float(teacher.counter),
                "amigo/teacher_reward": float(np.mean(episode.teacher_rewards)) if episode.teacher_rewards else 0.0,
            })
            if np.isfinite(teacher.last_batch_reward):
                record["amigo/teacher_batch_reward"] = teacher.last_batch_reward
        return record

    def _propose(self) -> None:
        if self.proposer is None:
            return
        self.goal = self.proposer.propose_cell(self._cell, self._observation)
        self._goal_from, self._steps_since_proposal, self._extrinsic_in_goal = self._cell, 0, False
        self.episode.proposed += 1
        self.episode.distances.append(manhattan(self._cell, self.goal, self.size))

    def _close_goal(self, *, reached: bool) -> None:
        episode = self.episode
        teacher_reward = self.proposer.observe_goal_episode(
            self._goal_from, self.goal, reached, self._steps_since_proposal, self._extrinsic_in_goal
        )
        if teacher_reward is not None:
            episode.teacher_rewards.append(teacher_reward)
        if reached:
            episode.reached += 1
            episode.steps_to_reach.append(self._steps_since_proposal)
        self._goal_from = -1


class AmigoSession:
    """The node's side: the calls `agent_node/node.py` makes on a goal session, for an AMIGo
    student. No peer messages, no episode-start hold (the run schema refuses both)."""

    def __init__(self, *, env_agent: str, student: AmigoStudent) -> None:
        self.env_agent = env_agent
        self.student = student
        self.agent = student.agent
        self.negotiation = None  # the goal-lines session's attribute; AMIGo negotiates nothing
        self._pending_row: Transition | None = None
        self._records: list[dict[str, float]] = []
        self._episode_began_at = -1  # the lockstep step of the current episode's first observation
        self.episodes_finished = 0

    # -- acting and observing

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        if not self.student.in_episode:
            return np.zeros(len(obs), dtype=np.int64)  # stay: not taking part
        return self.student.act(obs, explore)

    def observe(self, transition: Transition) -> None:
        """The transition the node assembled from the observation `on_observation` gets next."""
        self._pending_row = transition if len(transition.action) else None

    def on_observation(self, message: m.EnvObservation, now: float) -> list[Outgoing]:
        if np.asarray(message.episode_start).shape != (1,):
            raise ValueError(f"env.observation: AMIGo agents run on one env copy (env.num_copies: 1), got {np.asarray(message.episode_start).shape}")
        row, self._pending_row = self._pending_row, None
        agent = self.env_agent
        starting = bool(message.episode_start[0])
        if self.student.in_episode and message.step > self._episode_began_at:
            terminated = bool(np.asarray(message.terminated[agent])[0])
            truncated = bool(np.asarray(message.truncated[agent])[0])
            cell = self._cell(message)
            if row is not None:
                self.student.step(row.obs[0], row.action[0], float(row.reward[0]), row.next_obs[0], cell, terminated, truncated)
            else:
                extrinsic = float(np.asarray(message.rewards[agent])[0])
                seen = None if starting else np.asarray(message.observations[agent])[0]  # at a start: the next episode's
                self.student.step(None, None, extrinsic, seen, cell, terminated, truncated, store=False)
            if terminated or truncated or starting:
                self.episodes_finished += 1
                self._records.append({"amigo/episode_end_step": float(message.step), **self.student.end_episode()})
        if starting and not message.run_finished and bool(np.asarray(message.active[agent])[0]):
            observation = np.asarray(message.observations[agent])[0]
            self.student.begin_episode(cell_of_observation(observation, self.student.size), observation)
            self._episode_began_at = message.step
        return []

    def _cell(self, message: m.EnvObservation) -> int:
        infos = message.infos.get(self.env_agent, {})
        if "cell" not in infos:
            raise ValueError(
                f"env.observation of step {message.step} has no infos['cell'] for {self.env_agent}: "
                "the env section must forward it (env.forward_infos: [cell])"
            )
        return int(np.asarray(infos["cell"])[0])

    # -- the rest of the goal-session interface: nothing to do for a teacher of one's own

    def on_episode_start(self, announcement: m.EnvEpisodeStart, now: float) -> list[Outgoing]:
        log.warning("env.episode_start at step %d: AMIGo agents hold no episode start", announcement.step)
        return []

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        log.warning("%s from %s: an AMIGo agent takes no goal messages", type(message).__name__, sender)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []

    def take_ready(self) -> list[tuple[int, int | None]]:
        return []

    def take_records(self) -> list[dict[str, float]]:
        records, self._records = self._records, []
        return records


class AmigoLearner(SessionLearner):
    """The `NodeLearner` (agent_node/roles.py) of an AMIGo student: acting and observing go
    through the session as for any goal agent (agent_node/goal_agent.py's SessionLearner), conditioned
    on the current cell goal; checkpoints hold the student's network, the teacher and the
    novelty counts."""

    session: AmigoSession

    def state_dict(self) -> dict[str, Any]:
        student = self.session.student
        state: dict[str, Any] = {"goal_dqn": self.agent.state_dict()}
        if isinstance(student.proposer, AmigoTeacher):
            teacher = student.proposer.state_dict()
            state["teacher"] = {**teacher, "logits": torch.as_tensor(teacher["logits"])}
        elif isinstance(student.proposer, NetworkTeacher):
            state["teacher_network"] = student.proposer.state_dict()
        if student.novelty is not None:
            cells = sorted(student.novelty.counts)
            state["novelty_counts"] = torch.tensor([[cell, student.novelty.counts[cell]] for cell in cells], dtype=torch.int64).reshape(-1, 2)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["goal_dqn"])
        student = self.session.student
        if isinstance(student.proposer, AmigoTeacher) and "teacher" in state:
            teacher = dict(state["teacher"])
            student.proposer.load_state_dict({**teacher, "logits": np.asarray(teacher["logits"])})
        if isinstance(student.proposer, NetworkTeacher) and "teacher_network" in state:
            student.proposer.load_state_dict(state["teacher_network"])
        if student.novelty is not None and "novelty_counts" in state:
            student.novelty.counts = {int(cell): int(count) for cell, count in np.asarray(state["novelty_counts"]).tolist()}


def build_proposer(settings: AmigoSettings, *, seed: int) -> AmigoTeacher | NetworkTeacher | UniformCells:
    num_cells = settings.grid_size ** 2
    if settings.proposer == "uniform":
        return UniformCells(num_cells, seed)
    curriculum = Curriculum(
        t_star=settings.t_star, t_star_max=settings.t_star_max, alpha=settings.teacher_alpha, beta=settings.teacher_beta,
        batch_size=settings.teacher_batch_size, difficulty_threshold=settings.difficulty_threshold,
        difficulty_counts=settings.difficulty_counts,
    )
    if settings.teacher == "network":
        return NetworkTeacher(settings.grid_size, seed, curriculum, learning_rate=settings.learning_rate(),
                              entropy_cost=settings.entropy_cost(), channels=settings.channels())
    return AmigoTeacher(num_cells, seed, curriculum, learning_rate=settings.learning_rate())


def build_amigo_session(
    settings: AmigoSettings,
    learner_config,
    *,
    node_index: int,
    run_seed: int,
    env_agent: str,
    obs_dim: int,
    num_actions: int,
) -> tuple[AmigoSession, AmigoLearner]:
    """The session and the learner of one AMIGo student (imports torch: the learner's)."""
    size = settings.grid_size
    if obs_dim not in (2, grid_observation_size(size)):
        raise ValueError(
            f"agents.goals.amigo.grid_size: {size} does not fit the env's observations of {obs_dim} entries (a cell grid's "
            f"position has 2; a {size}x{size} grid observation of minigrid_v0 has {grid_observation_size(size)}); "
            "for minigrid_v0, grid_size is the task's max(width, height)"
        )
    if settings.teacher == "network" and obs_dim != grid_observation_size(size):
        raise ValueError(f"agents.goals.amigo.teacher: 'network' proposes from a grid observation (minigrid_v0), got observations of {obs_dim} entries")
    features = cell_features(size) if settings.goal_encoding == "coordinates" else None

    def no_relabelling(goal: int, achieved: np.ndarray) -> float:
        raise RuntimeError("AMIGo's student stores rows with their rewards (observe_rows); nothing relabels them")

    agent = build_goal_agent(learner_config, obs_dim, num_actions, derive_seed(run_seed, node_index, "learner"),
                             GoalSpace(size * size, no_relabelling, goal_features=features))
    proposer = build_proposer(settings, seed=derive_seed(run_seed, node_index, "goals/amigo_teacher"))
    novelty = BeBoldNovelty() if settings.novelty == "bebold" else None
    student = AmigoStudent(agent, proposer, size=size, max_steps=settings.max_steps, novelty=novelty, novelty_scale=settings.novelty_scale)
    session = AmigoSession(env_agent=env_agent, student=student)
    return session, AmigoLearner(session)
