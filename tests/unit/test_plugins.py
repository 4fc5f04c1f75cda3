"""Learner and world-model plugins (agent_node/plugins.py): resolution by built-in name, entry point
and import path; the interface checks; each plugin's own config in the run's schema; exit 2 from
`validate` and `up` before anything starts."""

from __future__ import annotations

import importlib.metadata
import sys
from typing import ClassVar, Mapping

import numpy as np
import pytest
from pydantic import Field

from agent_node.algos import LEARNERS
from agent_node.plugins import Entry, PluginConfig, PluginError, WorldModelSpec
from agent_node.world_models import WORLD_MODELS, build_world_model
from orchestrator import cli
from orchestrator.config import load_config, resolve, validate_config, with_nodes
from protocols.run.config_errors import ConfigError
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "parley_ippo"
IPPO_PATH = "parley_ippo.learner:IPPOLearner"
TINY = str(REPO / "configs" / "tiny_ring.yaml")


@pytest.fixture(autouse=True)
def example_importable(monkeypatch):
    """The example package, importable whether or not `make setup` installed it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


# ------------------------------------------------------------------ toy plugins (numpy only)


class ToyWorldModelConfig(PluginConfig):
    ridge: float = Field(1e-3, gt=0)


class ToyWorldModel:
    """A linear next-state model by ridge regression: parameters to average, no statistics."""

    config_model: ClassVar[type[ToyWorldModelConfig]] = ToyWorldModelConfig

    def __init__(self, config: ToyWorldModelConfig, spec: WorldModelSpec) -> None:
        self.config = config
        self.weights = np.zeros((spec.state_dim + spec.action_dim, spec.state_dim))

    def fit(self, states, actions, next_states) -> dict[str, float]:
        inputs = np.concatenate([states, actions], axis=1)
        gram = inputs.T @ inputs + self.config.ridge * np.eye(inputs.shape[1])
        self.weights = np.linalg.solve(gram, inputs.T @ next_states)
        return {"toy/mse": float(np.mean((inputs @ self.weights - next_states) ** 2))}

    def predict(self, states, actions):
        mean = np.concatenate([states, actions], axis=1) @ self.weights
        return mean, np.zeros_like(mean)

    def get_params(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights.copy()}

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        self.weights = np.array(params["weights"])


class NoConfigLearner:
    """Every learner method, but no `config_model`."""

    def act(self, obs, explore=True): ...
    def observe(self, transition): ...
    def gradient_steps_due(self): ...
    def update(self, max_gradient_steps=None): ...
    def counters(self): ...
    def state_dict(self): ...
    def load_state_dict(self, state): ...


class HalfALearner:
    config_model = PluginConfig

    def act(self, obs, explore=True): ...


class AveragesNothing:
    config_model = PluginConfig

    def fit(self, states, actions, next_states): ...
    def predict(self, states, actions): ...


NOT_A_CLASS = 3
HERE = __name__  # the import path of this module, as pytest imported it


# ------------------------------------------------------------------ resolution


def test_builtins_resolve_from_the_registry_table_without_importing_their_code():
    entry = LEARNERS.resolve("dqn")
    assert entry.source == "built-in" and entry.action_space == "discrete"
    assert LEARNERS.resolve("sac").action_space == "box"
    assert WORLD_MODELS.resolve("sparse_gp").has_statistics and not WORLD_MODELS.resolve("sparse_gp").has_params
    assert WORLD_MODELS.resolve("ensemble").has_params


def test_an_import_path_resolves_to_the_class_with_its_config_and_action_space():
    entry = LEARNERS.resolve(IPPO_PATH)
    from parley_ippo.config import IPPOConfig
    from parley_ippo.learner import IPPOLearner

    assert entry.source == "import path"
    assert entry.config_model is IPPOConfig
    assert entry.action_space == "discrete"
    assert entry.load_builder() is IPPOLearner


def test_an_installed_entry_point_resolves_by_its_name(monkeypatch):
    point = importlib.metadata.EntryPoint(name="toy", value=f"{HERE}:ToyWorldModel", group="parley.world_models")

    def entry_points(group: str):
        return [point] if group == "parley.world_models" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    entry = WORLD_MODELS.resolve("toy")
    assert entry.config_model is ToyWorldModelConfig
    assert entry.source.startswith("entry point")
    assert entry.has_params and not entry.has_statistics
    assert WORLD_MODELS.installed() == ["toy"]


def test_a_built_in_name_wins_over_an_entry_point_of_the_same_name(monkeypatch):
    point = importlib.metadata.EntryPoint(name="dqn", value=IPPO_PATH, group="parley.learners")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point])
    assert LEARNERS.resolve("dqn").source == "built-in"


def test_an_entry_point_that_cannot_load_is_named(monkeypatch):
    point = importlib.metadata.EntryPoint(name="broken", value="no_such_package.mod:Learner", group="parley.learners")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point])
    with pytest.raises(PluginError, match=r"'broken' is the entry point 'no_such_package.mod:Learner'.*ModuleNotFoundError"):
        LEARNERS.resolve("broken")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no_such_package.learners:Learner", r"cannot import module 'no_such_package.learners': ModuleNotFoundError"),
        ("parley_ippo.learner:NoSuchLearner", r"module 'parley_ippo.learner' has no attribute 'NoSuchLearner'"),
        (f"{HERE}:NOT_A_CLASS", r"expected a class implementing the learner interface, got int 3"),
        (f"{HERE}:HalfALearner", r"class HalfALearner does not implement the learner interface: missing observe, gradient_steps_due, update, counters, state_dict, load_state_dict"),
        (f"{HERE}:NoConfigLearner", r"must name its config as the class attribute `config_model`, a subclass of agent_node.plugins.PluginConfig; got None"),
        ("ppo", r"expected one of 'dqn', .* or an import path 'package.module:Class', got 'ppo' \(str\)"),
        ("pkg:", r"'pkg:': expected the form 'package.module:name'"),
    ],
)
def test_what_cannot_be_a_learner_is_refused_naming_it(kind, message):
    with pytest.raises(PluginError, match=message):
        LEARNERS.resolve(kind)


def test_a_world_model_must_give_consensus_something_to_average():
    with pytest.raises(PluginError, match=r"gives consensus nothing to average: expected get_params and set_params, or export_statistics and import_statistics"):
        WORLD_MODELS.resolve(f"{HERE}:AveragesNothing")


def test_build_checks_the_built_object_too():
    class Lying:
        config_model = PluginConfig

        def fit(self, *a): ...
        def predict(self, *a): ...
        def get_params(self): ...
        def set_params(self, p): ...

        def __new__(cls, config, spec):
            return object()  # a builder that returns something else than it promised

    registry = type(WORLD_MODELS)("world model", "none", ("fit", "predict"), {
        "lying": Entry("lying", PluginConfig, lambda: Lying, "test"),
    })
    with pytest.raises(TypeError, match=r"world model kind 'lying' built a object, which lacks fit, predict"):
        registry.build(PluginConfig(kind="lying"), WorldModelSpec(2, 1, 0))


def test_a_plugin_world_model_builds_through_the_same_function_as_the_built_ins():
    config = WORLD_MODELS.validate({"kind": f"{HERE}:ToyWorldModel", "ridge": 0.5}, lambda data: pytest.fail("not a built-in"))
    model = build_world_model(config, state_dim=2, action_dim=1, seed=0)
    assert isinstance(model, ToyWorldModel) and model.config.ridge == 0.5
    states, actions = np.ones((4, 2)), np.zeros((4, 1))
    model.fit(states, actions, states)
    assert model.predict(states, actions)[0].shape == (4, 2)


# ------------------------------------------------------------------ the run's schema


def tiny(*overrides: str):
    return load_config(TINY, list(overrides))


def problems_of(*overrides: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        tiny(*overrides)
    return caught.value.problems


IPPO_SECTION = f"agents.learner={{kind: '{IPPO_PATH}', rollout_rows: 16, epochs: 2, minibatches: 2}}"


def test_a_plugin_learner_config_validates_into_its_own_model_and_round_trips():
    config = tiny(IPPO_SECTION)
    from parley_ippo.config import IPPOConfig

    assert isinstance(config.agents.learner, IPPOConfig)
    assert config.agents.learner.rollout_rows == 16
    resolved = resolve(config)
    assert resolved["agents"]["learner"]["kind"] == IPPO_PATH
    assert resolved["agents"]["learner"]["clip_coef"] == 0.2  # defaults written out, as for built-ins
    assert validate_config(resolved) == with_nodes(config)


def test_a_plugin_config_names_its_unknown_keys_and_bad_values():
    assert problems_of(IPPO_SECTION, "agents.learner.clip=0.1") == (
        "agents.learner.clip: unknown key; valid keys: kind, hidden_sizes, learning_rate, gamma, gae_lambda, rollout_rows, "
        "epochs, minibatches, clip_coef, entropy_coef, value_coef, max_grad_norm, normalize_advantages (did you mean 'clip_coef'?)",
    )
    assert problems_of(IPPO_SECTION, "agents.learner.gamma=2") == ("agents.learner.gamma: expected less than or equal to 1, got 2 (int)",)
    assert problems_of(IPPO_SECTION, "agents.learner.minibatches=17") == (
        "agents.learner.minibatches: expected at most rollout_rows (16), every minibatch needs a row; got 17",
    )


def test_a_bad_kind_is_named_under_the_section():
    (problem,) = problems_of("agents.learner.kind=no_such_package.learners:Learner")
    assert problem.startswith("agents.learner.kind: 'no_such_package.learners:Learner': cannot import module")
    (problem,) = problems_of(f"agents.world_model={{kind: '{HERE}:AveragesNothing'}}")
    assert problem.startswith("agents.world_model.kind: ") and "nothing to average" in problem


def test_swapping_to_a_plugin_kind_keeps_the_keys_its_config_takes(capsys):
    config = tiny(f"agents.learner.kind={IPPO_PATH}")
    assert config.agents.learner.hidden_sizes == (32,)  # the file's DQN setting, which IPPO reads the same way
    assert "dropped the dqn key(s)" in capsys.readouterr().err


def test_consensus_is_held_against_what_the_world_model_can_average():
    toy = f"agents.world_model={{kind: '{HERE}:ToyWorldModel'}}"
    assert problems_of(toy, "protocols.consensus={enabled: true, what: world_model_statistics}") == (
        f"protocols.consensus.what: 'world_model_statistics' averages the model's sufficient statistics, and world model "
        f"'{HERE}:ToyWorldModel' has no export_statistics / import_statistics; average world_model_parameters instead",
    )
    tiny(toy, "protocols.consensus={enabled: true, what: world_model_parameters}")  # what it has
    (problem,) = problems_of("agents.world_model={kind: sparse_gp}", "protocols.consensus={enabled: true, what: world_model_parameters}")
    assert "world model 'sparse_gp' has no get_params / set_params" in problem


# ------------------------------------------------------------------ exit 2 before anything starts


@pytest.mark.parametrize(
    "override, named",
    [
        ("agents.learner.kind=no_such_package.learners:Learner", "agents.learner.kind: 'no_such_package.learners:Learner': cannot import module"),
        ("agents.learner.kind=parley_ippo.learner:NoSuchLearner", "has no attribute 'NoSuchLearner'"),
        (f"agents.learner.kind={HERE}:HalfALearner", "does not implement the learner interface"),
        (f"{IPPO_SECTION.replace('epochs: 2', 'epochs: 0')}", "agents.learner.epochs: expected greater than 0, got 0 (int)"),
        # a peer protocol (agents.protocols): a wrong import path, a bad setting
        ("agents.protocols=[{kind: 'parley_ippo.gossip:NoSuchGossip'}]",
         "agents.protocols.0.kind: 'parley_ippo.gossip:NoSuchGossip': module 'parley_ippo.gossip' has no attribute 'NoSuchGossip'"),
        ("agents.protocols=[{kind: 'parley_ippo.gossip:ReturnGossip', every_steps: -1}]",
         "agents.protocols.0.every_steps: expected greater than 0, got -1 (int)"),
    ],
)
@pytest.mark.parametrize("verb", ["validate", "up"])
def test_validate_and_up_exit_2_naming_the_plugin_problem(verb, override, named, tmp_path, capsys):
    run_dir = tmp_path / "run"
    extra = ["--run-dir", str(run_dir)] if verb == "up" else []
    assert cli.main([verb, TINY, "--set", override, *extra]) == 2
    assert named in capsys.readouterr().err
    assert not run_dir.exists()  # refused before a run directory (or a process) was made


def test_the_example_is_found_by_its_entry_point_where_it_is_installed():
    """`make setup` installs examples/parley_ippo; its pyproject.toml declares `ippo`."""
    installed = [p for p in importlib.metadata.entry_points(group="parley.learners") if p.name == "ippo"]
    if not installed:
        pytest.skip("examples/parley_ippo is not installed in this venv (make setup installs it)")
    assert LEARNERS.resolve("ippo").config_model.__name__ == "IPPOConfig"


def test_the_entry_point_in_the_example_pyproject_names_the_learner():
    import tomllib

    pyproject = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["parley.learners"] == {"ippo": IPPO_PATH}
    assert LEARNERS.resolve(IPPO_PATH).config_model.__name__ == "IPPOConfig"
    from agent_node.peer_protocols import PROTOCOLS

    assert pyproject["project"]["entry-points"]["parley.protocols"] == {"return_gossip": "parley_ippo.gossip:ReturnGossip"}
    assert PROTOCOLS.resolve("parley_ippo.gossip:ReturnGossip").config_model.__name__ == "GossipConfig"


def test_the_example_protocol_is_found_by_its_entry_point_where_it_is_installed():
    from agent_node.peer_protocols import PROTOCOLS

    if "return_gossip" not in PROTOCOLS.installed():
        pytest.skip("examples/parley_ippo (with its protocol) is not installed in this venv (make setup installs it)")
    assert PROTOCOLS.resolve("return_gossip").config_model.__name__ == "GossipConfig"


def test_importing_the_schema_of_a_built_in_run_imports_no_torch():
    import subprocess

    code = "import sys; from orchestrator.config import load_config; load_config(sys.argv[1]); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, TINY], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# ------------------------------------------------------------------ one build path for the built-ins

# Each built-in learner and world model class, and where the registry's builder makes it.
BUILT_BY_THE_REGISTRY = {
    "DQNAgent": "agent_node/algos/__init__.py", "SACAgent": "agent_node/algos/__init__.py",
    "OGMARLAgent": "agent_node/algos/__init__.py", "PMICAgent": "agent_node/algos/__init__.py",
    "SharedDQNAgent": "agent_node/algos/__init__.py", "CQLAgent": "agent_node/algos/__init__.py",
    "BCAgent": "agent_node/algos/__init__.py", "GoalDQNAgent": "agent_node/algos/__init__.py",
    "SparseGPWorldModel": "agent_node/world_models/__init__.py", "EnsembleWorldModel": "agent_node/world_models/__init__.py",
}
# An algorithm made of another one builds its part itself (the part is not a run's learner).
PARTS = {("agent_node/algos/shared_dqn.py", "DQNAgent"), ("agent_node/algos/og_marl.py", "SACAgent")}


def test_no_module_of_the_runtime_builds_a_built_in_learner_or_world_model_around_the_registry():
    """Read from the source: a built-in class is constructed only by its registry builder, so the
    node, the capabilities (CTDE's actor, the goal sessions) and the offline trainer all go
    through `LEARNERS.build` / `WORLD_MODELS.build`, as a plugin does."""
    import ast

    found = []
    for package in ("agent_node", "orchestrator", "env_server"):
        for path in sorted((REPO / package).rglob("*.py")):
            where = str(path.relative_to(REPO))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BUILT_BY_THE_REGISTRY:
                    if BUILT_BY_THE_REGISTRY[node.func.id] != where and (where, node.func.id) not in PARTS:
                        found.append(f"{where}:{node.lineno} {node.func.id}(...)")
    assert found == []


def test_goal_dqn_builds_through_the_registry_with_the_goal_space_its_session_gives():
    import gymnasium as gym

    from agent_node.algos.config import GoalDQNConfig
    from agent_node.plugins import GoalSpace, LearnerSpec

    spec = LearnerSpec(gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(3), seed=0)
    with pytest.raises(ValueError, match="'goal_dqn' needs the goal space that its goal session gives"):
        LEARNERS.build(GoalDQNConfig(), spec)
    agent = LEARNERS.build(GoalDQNConfig(), LearnerSpec(spec.observation_space, spec.action_space, 0,
                                                        goals=GoalSpace(5, lambda goal, achieved: 0.0)))
    assert type(agent).__name__ == "GoalDQNAgent" and (agent.obs_dim, agent.num_actions, agent.num_goals) == (4, 3, 5)
