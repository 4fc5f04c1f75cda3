"""What `validate`, `up` and `sweep` check against the built environment before anything launches.

The schema (orchestrator/config.py) checks what a config says on its own. What depends on the
environment it names can only be known once the env is built: how many agents it has, which
spaces they act in. `fetch_env_facts` builds it once, in a subprocess (`python -m
env_server.precheck`: the orchestrator imports no env code, and an env's import side effects
stay out of its process), and `launch_problems` holds the rest of the config against those facts:

- `agents.count`: one agent node drives each possible agent (agent_i drives possible_agents[i]),
  so the count must equal the env's. With fewer, the env server waits out its join deadline for
  the others and then steps them on default actions; with more, the extra nodes are refused at
  join. Both used to surface only once the run was going, or never.
- `agents.learner.kind`: each learner acts in one kind of action space (a built-in's in
  agent_node.algos.config.LEARNER_ACTION_SPACE, a plugin's in its class attribute `action_space`;
  both read through the registry, agent_node.algos.LEARNERS), and every learner reads Box observations;
  image observations only a built-in learner with a CNN reads (IMAGE_ENCODER_KINDS).
- `agents.learner.kind: og_marl` / `agents.learner.reward: own_contribution`: they score rows with
  the task's reward function, which the env must describe as data (`task_spec()`, sent to the
  agents in env.welcome); otherwise every agent would fail when it builds its learner.
- `agents.load_checkpoints` / `agents.load_shared_checkpoint`: a checkpoint for every agent,
  where the node will look for it (agent_node.config.initial_checkpoint_candidates).

Each problem is one `field.path: expected ..., got ...` line, as in every config error; the CLI
exits 2 with them before any run directory exists or process starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node.algos import LEARNERS
from agent_node.algos.config import IMAGE_ENCODER_KINDS, LEARNER_ACTION_SPACE, OFFLINE_KINDS
from agent_node.config import initial_checkpoint, initial_checkpoint_candidates
from orchestrator.config import RunConfig
from protocols.run.config_errors import ConfigError
from protocols.run.settings import agent_node_ids

# How long the env check may take: building an environment once (imports included).
ENV_CHECK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class EnvFacts:
    """What the built env says about itself (env_server/precheck.py prints it)."""

    agents: tuple[str, ...]
    # Per possible agent: {"kind": "box", "shape": [...], "image": bool}, {"kind": "discrete", "n": 5}, or {"kind": ...}.
    observation_spaces: dict[str, dict[str, Any]]
    action_spaces: dict[str, dict[str, Any]]
    # The kind of the reward function the env describes as data (its `task_spec()`), or None.
    task: str | None = None

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> EnvFacts:
        return cls(tuple(answer["agents"]), dict(answer["observation_spaces"]), dict(answer["action_spaces"]),
                   answer.get("task"))


def fetch_env_facts(config: RunConfig, source: str) -> EnvFacts:
    """Build `config.env` once in a subprocess; raise ConfigError naming the field when it cannot
    be built or is not a ParallelEnv."""
    request = json.dumps({"name": config.env.name, "kwargs": dict(config.env.kwargs)})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "env_server.precheck", request],
            capture_output=True, text=True, timeout=ENV_CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError([f"env: building {config.env.name!r} to check it took over {ENV_CHECK_TIMEOUT_S:.0f} s"], source) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError([f"env: the check of {config.env.name!r} failed (exit {done.returncode}): {tail}"], source) from None
    if not answer.get("ok"):
        raise ConfigError([f"{answer['field']}: {answer['error']}"], source)
    return EnvFacts.from_answer(answer)


def check_launch(config: RunConfig, facts: EnvFacts, source: str) -> None:
    """Raise ConfigError with every problem of `launch_problems`, if any."""
    problems = launch_problems(config, facts)
    if problems:
        raise ConfigError(problems, source)


def launch_problems(config: RunConfig, facts: EnvFacts) -> list[str]:
    """What in `config` does not fit the env it builds (see the module docstring); [] when it fits."""
    env = config.env.name
    count = config.agents.count
    problems = []
    if len(facts.agents) != count:
        problems.append(
            f"agents.count: expected {len(facts.agents)}, the possible agents of {env} with env.kwargs "
            f"{dict(config.env.kwargs)} ({_listed(facts.agents)}; one agent node drives each), got {count}"
        )
    problems.extend(_space_problems(config, facts))
    problems.extend(_task_problems(config, facts))
    problems.extend(_checkpoint_problems(config, facts))
    return problems


def _space_problems(config: RunConfig, facts: EnvFacts) -> list[str]:
    kind = config.agents.learner.kind
    problems = []
    needed = LEARNERS.resolve(kind).action_space  # resolved once already, when the config validated
    misfits = {a: space for a, space in facts.action_spaces.items() if needed is not None and not _fits(space, needed)}
    if misfits:
        agent, space = next(iter(misfits.items()))
        takes = sorted(k for k, v in LEARNER_ACTION_SPACE.items() if _fits(space, v) and k not in OFFLINE_KINDS)
        problems.append(
            f"agents.learner.kind: {kind!r} acts in a {_needs(needed)} action space; {config.env.name} gives "
            f"{_described(space)} to {agent}" + (f" and {len(misfits) - 1} other agent(s)" if len(misfits) > 1 else "")
            + (f"; learners for that space: {', '.join(takes)}" if takes else "; no learner here acts in that space")
        )
    not_box = {a: space for a, space in facts.observation_spaces.items() if space.get("kind") != "box"}
    if not_box:
        agent, space = next(iter(not_box.items()))
        problems.append(
            f"env.name: every learner reads a Box observation; {config.env.name} gives {_described(space)} to {agent}"
            + (f" and {len(not_box) - 1} other agent(s)" if len(not_box) > 1 else "")
        )
    images = {a: space for a, space in facts.observation_spaces.items() if space.get("image")}
    if images and kind in LEARNER_ACTION_SPACE and kind not in IMAGE_ENCODER_KINDS:
        agent, space = next(iter(images.items()))
        problems.append(
            f"agents.learner.kind: {config.env.name} gives image observations ({_described(space)}, uint8 pixels) to "
            f"{agent}; {kind!r} would flatten them into its first layer, and only "
            f"{_listed(sorted(IMAGE_ENCODER_KINDS))} reads images through a CNN (agents.learner.encoder)"
        )
    if images and getattr(config.agents.learner, "numpy_updates", False) and config.agents.learner.encoder != "mlp":
        agent, space = next(iter(images.items()))
        problems.append(
            f"agents.learner.numpy_updates: {config.env.name} gives image observations ({_described(space)}) to {agent}, "
            "which DQN reads through a CNN, and numpy updates take a plain MLP; set numpy_updates: false, or encoder: mlp"
        )
    return problems


def _task_problems(config: RunConfig, facts: EnvFacts) -> list[str]:
    """The learners that score rows with the task's reward function need an env that describes it."""
    if facts.task is not None:
        return []
    learner = config.agents.learner
    uses = []  # (the config field, what it scores with the reward function)
    if learner.kind == "og_marl":
        uses.append(("agents.learner.kind", "'og_marl' scores its imagined steps"))
        if learner.sac.reward == "own_contribution":
            uses.append(("agents.learner.sac.reward", "'own_contribution' scores each real row"))
    elif learner.kind == "sac" and learner.reward == "own_contribution":
        uses.append(("agents.learner.reward", "'own_contribution' scores each real row"))
    return [
        f"{field}: {what} with the task's reward function, which the env must describe as data (task_spec()); "
        f"{config.env.name} describes none" + ("; set it to 'team'" if field.endswith(".reward") else "")
        for field, what in uses
    ]


def _checkpoint_problems(config: RunConfig, facts: EnvFacts) -> list[str]:
    agents = config.agents
    if agents.load_shared_checkpoint is not None:
        if not Path(agents.load_shared_checkpoint).is_file():
            return [f"agents.load_shared_checkpoint: expected a checkpoint file, got {agents.load_shared_checkpoint!r}, "
                    "which is not a file"]
        return []
    if agents.load_checkpoints is None:
        return []
    root = Path(agents.load_checkpoints)
    if not root.is_dir():
        return [f"agents.load_checkpoints: expected a directory of checkpoints (a run's <run dir>/nodes, or an "
                f"agent_node.offline --out), got {agents.load_checkpoints!r}, which is not a directory"]
    pairs = list(zip(facts.agents, agent_node_ids(len(facts.agents))))
    missing = [(env_agent, node_id) for env_agent, node_id in pairs if initial_checkpoint(root, env_agent, node_id) is None]
    if not missing:
        return []
    env_agent, node_id = missing[0]
    looked = " or ".join(str(path) for path in initial_checkpoint_candidates(root, env_agent, node_id))
    return [f"agents.load_checkpoints: expected a checkpoint for every agent; none for {len(missing)} of {len(pairs)} "
            f"({_listed([a for a, _ in missing])}); for {env_agent} ({node_id}) looked at {looked}"]


def _fits(space: dict[str, Any], needed: str) -> bool:
    if needed == "box":
        return space.get("kind") == "box" and len(space.get("shape", ())) == 1
    return space.get("kind") == needed


def _needs(needed: str) -> str:
    return {"box": "1-D Box (continuous)", "discrete": "Discrete"}[needed]


def _described(space: dict[str, Any]) -> str:
    if space.get("kind") == "box":
        return f"a Box of shape {tuple(space['shape'])}"
    if space.get("kind") == "discrete":
        return f"Discrete({space['n']})"
    return f"a {space.get('kind')} space"


def _listed(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else ", ".join(names[:5]) + f", ... {len(names)} in all"


def check_bind_host_before_launch(config: RunConfig, source: str) -> None:
    """With tcp, `network.bind_host` must be an address of this host: bind a throwaway socket
    to it (port 0) now, so a typo is a config error, not a ZMQError in every node later.

    (Every node of a local run binds this host's address. A backend that places nodes on other
    hosts checks their addresses there.)
    """
    import socket

    if config.network.transport != "tcp":
        return
    host = config.network.bind_host
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigError([f"network.bind_host: {host!r} is not an address or a known host name ({error})"], source) from None
    problems = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
                return
            except OSError as error:
                problems.append(f"{address[0]}: {error.strerror or error}")
    raise ConfigError([f"network.bind_host: {host!r} is not an address of this host ({'; '.join(problems)})"], source)


def check_env_before_launch(config: RunConfig, source: str) -> None:
    """Raise ConfigError naming the field when the env cannot be built, or when the config does
    not fit the env it builds: the agent count, the learner against the action spaces, the
    checkpoints to load (orchestrator/prelaunch.py). Before any run dir exists or process starts."""
    check_launch(config, fetch_env_facts(config, source), source)
