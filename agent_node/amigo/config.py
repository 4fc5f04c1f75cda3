"""The `agents.goals.amigo` section: AMIGo's teacher and student, and what an AMIGo run needs of
the rest of the config.

`agents.goals.selection: amigo` selects it (agent_node/goals/config.py holds the section it sits
in). What is refused here (validation errors, not silent no-ops): teacher settings with the
uniform proposer, `novelty_scale` without novelty, network-teacher settings with the table; and,
at the run level (`amigo_run_problems`): `her_strategy` other than none (the student's reward
depends on the time since the proposal, which HER's relabelling does not know), an env other than
treasure_room or minigrid_v0, the network teacher on treasure_room (no grid in its observation),
a grid or step limit unlike the env's, several env copies, infos without `cell`, an episode-start
hold, evaluation episodes.

No torch here: the CLI validates a run config in a fraction of a second.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.run.config_errors import changed_from_default

CELL_GRID_NAMES = ("treasure_room_v0", "env_server.envs.treasure_room:parallel_env")
CELL_GRID_DEFAULTS = {"size": 9, "max_steps": 40}
# MiniGrid tasks, one copy per agent (env_server/envs/minigrid_task.py): the grid side depends on
# the task, so the node checks grid_size against the observations' length when it starts.
MINIGRID_NAMES = ("minigrid_v0", "env_server.envs.minigrid_task:parallel_env")


class AmigoSettings(BaseModel):
    """AMIGo's teacher and student (agent_node/amigo/session.py, agent_node/amigo/teacher.py,
    agent_node/amigo/network_teacher.py); defaults are the paper's (ALGORITHMS.md section 3) except the
    tabular teacher's batch and learning rate, and the network teacher's layers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The cell grid: must equal the env's `size` and `max_steps` (T_max of the student's reward).
    grid_size: int = Field(9, ge=2)
    max_steps: int = Field(40, ge=1)
    # "teacher": AMIGo's teacher; "uniform": a goal cell drawn uniformly each time (the
    # no-curriculum baseline, same student and rewards).
    proposer: Literal["teacher", "uniform"] = "teacher"
    # The teacher: "table", logits per (student cell, goal cell) (open rooms: treasure_room);
    # "network", the paper's, a convolutional policy over the observed grid (minigrid_v0 only: it
    # needs the whole grid in the observation; every episode's layout differs there).
    teacher: Literal["table", "network"] = "table"
    teacher_alpha: float = Field(0.7, ge=0)  # teacher reward for a goal reached in >= t* steps
    teacher_beta: float = Field(0.3, ge=0)  # teacher penalty otherwise
    t_star: int = Field(7, ge=0)  # the starting target difficulty
    t_star_max: int = Field(100, ge=0)
    # t* += 1 after `difficulty_counts` consecutive updates whose mean teacher reward is at least
    # `difficulty_threshold`.
    difficulty_threshold: float = -0.5
    difficulty_counts: int = Field(10, ge=1)
    teacher_batch_size: int = Field(32, ge=1)  # goal episodes per teacher update (REINFORCE)
    # unset: 0.5 for the table (plain gradient steps on logits), 0.001 for the network (Adam)
    teacher_learning_rate: float | None = Field(None, gt=0)
    # network teacher only: the entropy bonus of its REINFORCE loss (unset: 0.05) and the width
    # of its convolutions (unset: 16).
    teacher_entropy_cost: float | None = Field(None, ge=0)
    teacher_channels: int | None = Field(None, ge=1)
    # How the student sees its goal: the cell's normalized (row, col), or one-hot over the cells.
    goal_encoding: Literal["coordinates", "one_hot"] = "coordinates"
    # BeBold's novelty (`max(1/N(s') - 1/N(s), 0)` on first visits in an episode) added to the
    # student's reward, times novelty_scale; "none": AMIGo's rewards alone.
    novelty: Literal["none", "bebold"] = "none"
    novelty_scale: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> AmigoSettings:
        if self.t_star_max < self.t_star:
            raise ValueError(f"t_star_max: expected at least t_star ({self.t_star}), got {self.t_star_max}")
        if self.proposer == "uniform":
            teacher_fields = {"teacher", "teacher_alpha", "teacher_beta", "t_star", "t_star_max", "difficulty_threshold",
                              "difficulty_counts", "teacher_batch_size", "teacher_learning_rate", "teacher_entropy_cost",
                              "teacher_channels"}
            if set_here := changed_from_default(self, sorted(teacher_fields)):
                raise ValueError(f"{', '.join(set_here)}: teacher settings, but proposer is 'uniform' (no teacher)")
        if self.novelty == "none" and changed_from_default(self, ["novelty_scale"]):
            raise ValueError("novelty_scale: set only with novelty 'bebold'")
        if self.teacher == "table" and (set_here := changed_from_default(self, ["teacher_entropy_cost", "teacher_channels"])):
            raise ValueError(f"{', '.join(set_here)}: network-teacher settings, but teacher is 'table'")
        return self

    def learning_rate(self) -> float:
        if self.teacher_learning_rate is not None:
            return self.teacher_learning_rate
        return 0.001 if self.teacher == "network" else 0.5

    def entropy_cost(self) -> float:
        return 0.05 if self.teacher_entropy_cost is None else self.teacher_entropy_cost

    def channels(self) -> int:
        return 16 if self.teacher_channels is None else self.teacher_channels


def amigo_run_problems(settings: AmigoSettings, her_strategy: str | None, env: Any) -> list[str]:
    """What is wrong with an AMIGo run across sections, one problem per line, each starting with its
    field path (agent_node/goals/config.py `goal_run_problems` adds them to the goals' own);
    `env` is the run's env section (env_server/config.py `EnvConfig`)."""
    problems: list[str] = []
    if her_strategy not in (None, "none"):
        problems.append(
            f"agents.learner.her_strategy: expected 'none' with selection 'amigo' (the student's reward depends on the "
            f"time since the goal was proposed, which HER's relabelling does not know), got {her_strategy!r}"
        )
    if env.name in MINIGRID_NAMES:
        # The task's own limit depends on the task (MiniGrid's registry, not imported here): say it.
        if env.kwargs.get("max_steps") != settings.max_steps:
            problems.append(
                f"env.kwargs.max_steps: expected agents.goals.amigo.max_steps ({settings.max_steps}) set explicitly on minigrid_v0 "
                f"(T_max of the student's reward), got {env.kwargs.get('max_steps')!r}"
            )
    elif env.name in CELL_GRID_NAMES:
        if settings.teacher == "network":
            problems.append(
                "agents.goals.amigo.teacher: 'network' proposes from the whole observed grid, which treasure_room's "
                "observation (the agent's position) does not hold; use 'table' there, or env minigrid_v0"
            )
        for key, field_name in (("size", "grid_size"), ("max_steps", "max_steps")):
            env_value = env.kwargs.get(key, CELL_GRID_DEFAULTS[key])
            if env_value != getattr(settings, field_name):
                problems.append(f"agents.goals.amigo.{field_name}: expected env.kwargs.{key} ({env_value}), got {getattr(settings, field_name)}")
    else:
        problems.append(
            f"env.name: selection 'amigo' runs on the cell grid ({' or '.join(CELL_GRID_NAMES + MINIGRID_NAMES)}), got {env.name!r}"
        )
        return problems
    if env.num_copies != 1:
        problems.append(f"env.num_copies: expected 1 with selection 'amigo' (one goal at a time per agent), got {env.num_copies}")
    if env.forward_infos != "all" and "cell" not in env.forward_infos:
        problems.append(f"env.forward_infos: expected 'cell' (AMIGo agents check their goal cells with it), got {env.forward_infos}")
    if env.episode_start_hold_s > 0:
        problems.append(
            f"env.episode_start_hold_s: expected 0 with selection 'amigo' (each agent's teacher decides alone), got {env.episode_start_hold_s}"
        )
    if env.eval_every_steps is not None:
        problems.append(
            "env.eval_every_steps: evaluation episodes of AMIGo students are not implemented (no goal is proposed "
            f"for them); expected null, got {env.eval_every_steps}"
        )
    return problems
