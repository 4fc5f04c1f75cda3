"""The `env` section of a run config: which environment the env server hosts, and how.

This module imports neither pettingzoo nor the environments: the schema validates a config
without building anything. Whether `name` is really registered, and whether the environment
has as many agents as the run, is checked by building it once before launch
(env_server/precheck.py, orchestrator/prelaunch.py). For a few well-known environments the
agent count follows from their kwargs alone (`static_agent_count`), and the schema checks it
already, so even the verbs that build nothing (`graph`, a sweep's dry run) catch it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocols.run.node_config import NodeSections
from protocols.run.config_errors import repeated

# `package.module:factory`, or a registry name such as `mpe2.simple_spread_v3`.
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_REGISTRY_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def clock_settings_refusal(*, clock: str, eval_clock: str, steps_per_s: float | None, max_steps_per_s: float | None,
                           episode_start_hold_s: float) -> str | None:
    """Why an env server cannot run training on `clock` and evaluation on `eval_clock` with these
    settings, as "setting: why"; None when it can. The one check of the env section (below) and of
    a server started without it (`env_server/rules.py`, the standalone command line)."""
    clocks = (clock, eval_clock)
    if any(one not in ("lockstep", "realtime") for one in clocks):
        return f"clock: expected lockstep or realtime for training and evaluation, got {clocks}"
    if "realtime" not in clocks:
        if steps_per_s is not None:
            return (f"steps_per_s: sets the rate of a realtime clock, but clock and eval_clock are lockstep; "
                    f"got {steps_per_s} (to pace the lockstep, use max_steps_per_s)")
        return None
    if steps_per_s is None or not (math.isfinite(steps_per_s) and steps_per_s > 0):
        which = "clock" if clock == "realtime" else "eval_clock"
        return (f"steps_per_s: {which} realtime steps the env at this rate; expected a positive number of steps "
                f"per second, got {'none' if steps_per_s is None else steps_per_s}")
    if clock == "realtime" and max_steps_per_s is not None:
        return (f"max_steps_per_s: paces the lockstep; with clock realtime the rate is steps_per_s, "
                f"expected none, got {max_steps_per_s}")
    if clock == "realtime" and episode_start_hold_s > 0:
        return (f"episode_start_hold_s: holds each episode's first observation for goal negotiation, which a "
                f"realtime clock does not do (the world does not wait); expected 0 with clock realtime, got "
                f"{episode_start_hold_s}")
    return None


class EnvConfig(BaseModel):
    """The environment, its constructor arguments, and the lockstep rules of the env server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A name from `env_server/registry.py` (`mpe2.simple_spread_v3`, `reward_collection_v0`, …)
    # or an import path `package.module:factory` returning a PettingZoo ParallelEnv.
    name: str
    # Passed to the factory as keyword arguments, unchanged.
    kwargs: dict[str, Any] = {}
    # K vectorized copies: one message to an agent carries K observations.
    num_copies: int = Field(1, ge=1)
    # Processes that step the K copies: the server and num_workers - 1 forked workers, each
    # stepping its share in parallel. It pays only when cores are free (the workers compete
    # with the agents for the CPU); 1 steps every copy in the server (see bench/PROFILE.md).
    num_workers: int = Field(1, ge=1)
    # Reset a copy as soon as its episode ends (the final observation is sent separately).
    autoreset: bool = True
    # A step happens when every live agent's action arrived, or after this long.
    step_deadline_s: float = Field(5.0, gt=0)
    # At most this many training lockstep steps per second (each steps the K copies); None: as
    # fast as the agents and the env go. It paces a run to the wall clock, so that a fault
    # schedule in seconds (`faults.schedule[].at_s`) meets the same steps on a fast machine as on
    # a slow one. Evaluation steps are not paced.
    max_steps_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    # Who decides when a training step happens. `lockstep`: the env steps when every awaited
    # agent's action has arrived (or step_deadline_s passed). `realtime`: the env steps
    # `steps_per_s` times a second whatever the agents do, as a robot's world does not wait: an
    # action not there at its step's time is replaced (`late_action`), the agent is named in the
    # next observation's `missing`, counted (`env/late_actions/<agent>`), and the age in steps
    # of each action played is logged (`env/action_age_steps/<agent>`, mean and max per status
    # period). See env_server/realtime.py.
    clock: Literal["lockstep", "realtime"] = "lockstep"
    # How evaluation episodes step: on the same clock as training (None), or the other one (e.g.
    # train in the lockstep and evaluate at a real-time rate). Needs eval_every_steps.
    eval_clock: Literal["lockstep", "realtime"] | None = None
    # The rate of a realtime clock (training and evaluation alike), in env steps per second
    # (each steps the K copies). Needed by a realtime clock, refused without one.
    steps_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    # What a realtime clock plays for an agent whose action for a step is not there: `last`
    # repeats the newest action it sent (a zero-order hold; its age grows step by step), `default`
    # plays `default_action`. Either way an action that arrives after its step's time is played at
    # the next step (its age: how many steps late it is), as a robot's late command is applied
    # when it lands. An agent that has sent nothing yet gets `default_action`.
    late_action: Literal["last", "default"] = "last"
    # How long the server waits for every agent to join before the first reset.
    join_deadline_s: float = Field(120.0, gt=0)
    # What a missing agent's action becomes: the action space's no-op (zeros / action 0) or a
    # uniformly random action.
    default_action: Literal["noop", "random"] = "noop"
    # Every this many lockstep steps, pause training and run `eval_episodes` episodes on
    # separate copies in which agents act deterministically; the mean return is written to
    # nodes/env/metrics.jsonl as `eval/return_mean`. None: no evaluation.
    eval_every_steps: int | None = Field(None, ge=1)
    eval_episodes: int = Field(5, ge=1)
    # No evaluation before this lockstep step (e.g. while the agents still act at random).
    eval_start_step: int = Field(0, ge=0)
    # Save the frames of each evaluation's first episode (evaluation copy 0, the env built with
    # render_mode "rgb_array") to nodes/env/frames/evaluation_<n>.npz; `orchestrate evaluate
    # --render out.gif` sets it and turns them into a GIF. Needs eval_every_steps.
    render_evaluation: bool = False
    # Keys of the env's per-agent `infos` to send to the agents with every observation (numbers or
    # numeric arrays only, e.g. goal_lines' [achieved_goals, landmark]), or "all": every key whose
    # value is numeric (others are named once in the server's log). Empty: infos are dropped,
    # and the lockstep pays nothing for them (its bodies can be packed). A named key the env does
    # not report stops the server at the first reset/step with an error naming it.
    forward_infos: list[str] | Literal["all"] = []
    # Hold each episode's first observation until the active agents report (goal.ready) that
    # their goal negotiation ended, or this long; the server announces who plays first
    # (env.episode_start; env_server/episode_hold.py). 0: no announcement, no hold.
    episode_start_hold_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    # How the lockstep's bodies reach agents on the env server's host (protocols/net/shm_lockstep.py):
    # `auto` passes them through shared memory when the agent is on this host and its spaces
    # pack (a fixed byte layout, no forwarded infos, no global view), else through zmq; `shm`
    # insists (the server does not start, or refuses the join, where it cannot work, naming why);
    # `zmq` never uses shared memory. Joining, control, peers and other hosts always use zmq.
    transport: Literal["auto", "shm", "zmq"] = "auto"
    # Where the agents are, for links that follow them (topology.kind: proximity): an import path
    # `package.module:function` of a function that takes the env as its factory built it and
    # returns {agent: position} (a sequence of floats, the same length for every agent). The MPE
    # environments have one built in (env_server/positions.py); None: the built-in one, if any.
    # Refused with another topology kind (nothing would read it).
    positions: str | None = None

    @model_validator(mode="after")
    def _rendering_needs_evaluations(self) -> "EnvConfig":
        if self.render_evaluation and self.eval_every_steps is None:
            raise ValueError("render_evaluation: renders evaluation episodes, so it needs eval_every_steps; got none")
        return self

    @property
    def evaluation_clock(self) -> str:
        """The clock evaluation episodes step on (`eval_clock`, or `clock` when unset)."""
        return self.eval_clock or self.clock

    @property
    def realtime_anywhere(self) -> bool:
        """Training or evaluation runs on the realtime clock."""
        return "realtime" in (self.clock, self.evaluation_clock)

    @model_validator(mode="after")
    def _clock_settings_agree(self) -> "EnvConfig":
        refusal = clock_settings_refusal(clock=self.clock, eval_clock=self.evaluation_clock, steps_per_s=self.steps_per_s,
                                         max_steps_per_s=self.max_steps_per_s, episode_start_hold_s=self.episode_start_hold_s)
        if refusal is not None:
            raise ValueError(refusal)
        if self.eval_clock is not None and self.eval_every_steps is None:
            raise ValueError(f"eval_clock: sets how evaluation episodes step, so it needs eval_every_steps; "
                             f"got eval_clock {self.eval_clock!r} and no evaluations")
        return self

    @model_validator(mode="after")
    def _shm_needs_packing(self) -> "EnvConfig":
        if self.transport == "shm" and self.forward_infos:
            raise ValueError("transport: shm passes packed bodies, which carry no infos; forward_infos "
                             f"{self.forward_infos} needs transport auto or zmq")
        return self

    @model_validator(mode="after")
    def _workers_have_copies(self) -> "EnvConfig":
        if self.num_workers > self.num_copies:
            raise ValueError(
                f"num_workers={self.num_workers} exceeds num_copies={self.num_copies}: every worker steps at least one copy"
            )
        return self

    @field_validator("forward_infos")
    @classmethod
    def _info_keys(cls, keys: list[str] | str) -> list[str] | str:
        if isinstance(keys, str):  # "all": the Literal checked it
            return keys
        empty = [k for k in keys if not k.strip()]
        if empty:
            raise ValueError(f"forward_infos: expected non-empty info key names, got {keys!r}")
        listed_twice = repeated(keys)
        if listed_twice:
            raise ValueError(f"forward_infos: keys {listed_twice} are listed more than once")
        return keys

    @field_validator("positions")
    @classmethod
    def _positions_path(cls, path: str | None) -> str | None:
        if path is not None and not _IMPORT_PATH.match(path):
            raise ValueError(f"expected an import path 'package.module:function' returning each agent's position, got {path!r}")
        return path

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not (_REGISTRY_NAME.match(name) or _IMPORT_PATH.match(name)):
            raise ValueError(
                "expected a registry name such as 'mpe2.simple_spread_v3' or an import path "
                f"'package.module:factory', got {name!r}"
            )
        return name


class EnvNodeConfig(NodeSections):
    """What an env server reads from its resolved config: the shared sections and `env`."""

    env: EnvConfig


# Environments whose number of agents is known from their kwargs without importing them:
# env name -> (kwarg that sets the count, its default). The names follow env_server/registry.py.
_AGENT_COUNT_KWARG: dict[str, tuple[str, int]] = {
    "mpe2.simple_spread_v3": ("N", 3),
    "simple_spread_v3": ("N", 3),
    "reward_collection_v0": ("num_agents", 5),
    "env_server.envs.reward_collection:parallel_env": ("num_agents", 5),
}


def static_agent_count(env: EnvConfig) -> tuple[int, str] | None:
    """(number of agents, why) for environments whose count follows from their kwargs, else None.

    None also when the kwarg is not an int: the env server will reject it with its own message.
    """
    known = _AGENT_COUNT_KWARG.get(env.name)
    if known is None:
        return None
    kwarg, default = known
    value = env.kwargs.get(kwarg, default)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    source = f"env.kwargs.{kwarg}={value}" if kwarg in env.kwargs else f"the default {kwarg}={default}"
    return value, f"{env.name} with {source} has {value} agents"
