"""The run config schema: shipped configs, error messages, overrides, resolution, seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from orchestrator.config import (
    RunConfig,
    derive_nodes,
    load_config,
    load_resolved,
    read_yaml,
    resolve,
    validate_config,
    with_nodes,
    write_resolved,
)
from protocols.run.config_errors import ConfigError
from orchestrator.overrides import apply_overrides, parse_override
from protocols.seeds import derive_seed

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY = ROOT / "configs" / "tiny_ring.yaml"


def problems_for(*overrides: str, path: Path = TINY) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, list(overrides))
    return list(caught.value.problems)


def only_problem(*overrides: str) -> str:
    problems = problems_for(*overrides)
    assert len(problems) == 1, problems
    return problems[0]


# ------------------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    config = load_config(path)
    assert config.agents.count >= 1
    assert config.build_topology().num_nodes == config.agents.count


def test_shipped_configs_include_the_documented_ones() -> None:
    ring = load_config(ROOT / "configs" / "4agents_ring.yaml")
    assert (ring.agents.count, ring.topology.kind, ring.env.num_copies) == (4, "ring", 8)
    assert ring.env.name == "mpe2.simple_spread_v3"
    assert ring.env.kwargs == {"N": 4, "max_cycles": 25, "continuous_actions": False}
    assert ring.agents.learner.kind == "dqn"
    tiny = load_config(TINY)
    assert (tiny.agents.count, tiny.run.steps, tiny.env.num_copies, tiny.env.kwargs["N"]) == (3, 60, 2, 3)


def test_importing_the_schema_does_not_import_heavy_packages() -> None:
    code = (
        "import sys, orchestrator.config, orchestrator.cli;"
        "print(sorted(m for m in ('torch', 'zmq', 'pettingzoo', 'gymnasium', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ error messages


def test_wrong_type_names_field_expected_and_given() -> None:
    assert only_problem("run.steps=abc") == "run.steps: expected a valid integer, got 'abc' (str)"


def test_negative_steps() -> None:
    assert only_problem("run.steps=-5") == "run.steps: expected greater than 0, got -5 (int)"


def test_unknown_key_lists_valid_keys_and_suggests() -> None:
    problem = only_problem("agents.lerner={kind: dqn}")
    assert problem.startswith("agents.lerner: unknown key; valid keys: count, learner, world_model, ")
    assert "did you mean 'learner'" in problem


def test_unknown_key_inside_a_union_member_lists_that_members_keys() -> None:
    problem = only_problem("agents.learner.lr=0.1")
    # The union tag ('dqn') is not part of the YAML path and must not show up in it.
    assert problem.startswith("agents.learner.lr: unknown key; valid keys: kind, hidden_sizes, encoder, learning_rate")


def test_bad_literal_lists_values() -> None:
    assert only_problem("network.transport=udp") == "network.transport: expected one of 'ipc', 'tcp', got 'udp' (str)"


@pytest.mark.parametrize("value", ["restart", "true", "START_FRESH", "1"])
def test_a_bad_on_corrupt_state_is_refused_listing_the_two_it_takes(value: str) -> None:
    assert only_problem(f"run.on_corrupt_state={value}").startswith(
        "run.on_corrupt_state: expected one of 'stop', 'start_fresh', got ")


def test_on_corrupt_state_is_stop_unless_the_config_says_start_fresh() -> None:
    assert load_config(TINY, []).run.on_corrupt_state == "stop"
    assert load_config(TINY, ["run.on_corrupt_state=start_fresh"]).run.on_corrupt_state == "start_fresh"


def test_bad_learner_kind_lists_kinds() -> None:
    # The built-ins, the installed plugins (which depend on the venv: examples/parley_ippo's `ippo`
    # where `make setup` installed it) and the import-path form (agent_node/plugins.py).
    problem = only_problem("agents.learner.kind=ppo")
    assert problem.startswith("agents.learner.kind: expected one of 'dqn', 'sac', 'og_marl', 'pmic', 'shared_dqn', 'cql', 'bc', 'goal_dqn', an installed plugin (")
    assert problem.endswith(") or an import path 'package.module:Class', got 'ppo' (str)")


def test_missing_learner_kind() -> None:
    assert only_problem("agents.learner={batch_size: 4}") == (
        "agents.learner.kind: required field is missing; expected one of 'dqn', 'sac', 'og_marl', 'pmic', 'shared_dqn', 'cql', 'bc', 'goal_dqn'"
    )


def test_bad_world_model_kind() -> None:
    assert only_problem("agents.world_model={kind: gp}") == (
        "agents.world_model.kind: expected one of 'sparse_gp', 'ensemble', an installed plugin (none installed in "
        "group parley.world_models) or an import path 'package.module:Class', got 'gp' (str)"
    )


def test_section_of_wrong_shape() -> None:
    assert only_problem("run=5") == "run: expected a mapping, got 5 (int)"


def test_missing_sections_are_each_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == tuple(f"{name}: required field is missing" for name in ("run", "env", "agents", "topology"))


def test_a_straggler_is_named_by_an_agent_node_of_the_run_with_seconds_it_waits() -> None:
    assert load_config(TINY, ["agents.act_delay_s.agent_2=0.05"]).agents.act_delay_s == {"agent_2": 0.05}
    with pytest.raises(ConfigError, match=r"act_delay_s: expected agent node ids of this run \(agent_0 .. agent_2\), got \['agent_3'\]"):
        load_config(TINY, ["agents.act_delay_s.agent_3=0.05"])
    with pytest.raises(ConfigError, match="act_delay_s: expected a finite number of seconds >= 0"):
        load_config(TINY, ["agents.act_delay_s.agent_0=-0.1"])


def test_topology_that_cannot_be_built_for_the_count() -> None:
    problem = only_problem("topology={kind: grid, rows: 2, cols: 2}")
    assert problem.startswith("topology: cannot build a 'grid' topology for agents.count=3:")
    assert "2 * 2 = 4" in problem


def test_topology_own_validation_names_the_field() -> None:
    assert only_problem("topology={kind: grid}") == "topology.rows: is required for kind 'grid'"


def test_agent_count_checked_against_simple_spread_n() -> None:
    assert only_problem("agents.count=4") == (
        "agents.count: expected 3 (mpe2.simple_spread_v3 with env.kwargs.N=3 has 3 agents), got 4"
    )
    # Consistent changes of both pass.
    assert load_config(TINY, ["agents.count=4", "env.kwargs.N=4"]).agents.count == 4


def test_agent_count_must_be_positive() -> None:
    assert only_problem("agents.count=0", "env.kwargs.N=0").startswith("agents.count: expected greater than or equal to 1, got 0")


def test_later_backends_are_refused_with_a_clear_message() -> None:
    # ssh is implemented (tests/unit/test_ssh_backend.py); without hosts it says what is missing.
    assert only_problem("launch.backend=ssh") == "launch.hosts: expected at least one host with backend 'ssh', got none"
    # ray is implemented (orchestrator/backends/ray.py); without its section it says what is missing.
    assert "launch.ray: expected the cluster section" in only_problem("launch.backend=ray")


def test_link_and_fault_node_ids_are_checked() -> None:
    assert only_problem("network.links.0={src: agent_0, dst: agent_7, link: {}}") == (
        "network.links.0.dst: expected a node id (env, agent_0 .. agent_2), got 'agent_7'"
    )
    assert only_problem("faults.schedule.0={at_s: 1, kind: kill}") == (
        "faults.schedule.0.nodes: a 'kill' fault needs its targets: node ids in nodes, a role, or random; got none"
    )
    assert only_problem("faults.schedule.0={at_s: 1, kind: partition, nodes: [env, agent_3]}").startswith(
        "faults.schedule.0.nodes: expected node ids"
    )


def test_nested_validator_sentence_gets_the_full_path() -> None:
    assert only_problem("network.default_link.loss=2") == (
        "network.default_link.loss: is a probability and must be in [0, 1], got 2.0"
    )


def test_consensus_cross_checks() -> None:
    assert only_problem("protocols.consensus={enabled: true, what: world_model_statistics, same_initial_policy: true}").startswith(
        "protocols.consensus.same_initial_policy: expected consensus.enabled with what 'policy_parameters'")
    assert only_problem("agents.learner={kind: sac}", "agents.world_model=null",
                        "protocols.consensus={enabled: true, what: policy_parameters, same_initial_policy: true}").startswith(
        "protocols.consensus.same_initial_policy: expected learner kind 'dqn'")
    assert only_problem("protocols.consensus.enabled=true").startswith("protocols.consensus.what:")
    assert only_problem(
        "topology={kind: star}", "protocols.consensus={enabled: true, what: policy_parameters, weights: uniform}"
    ).startswith("protocols.consensus.weights: expected 'metropolis'")
    assert only_problem("protocols.consensus={enabled: true, what: world_model_statistics, average_at_end: true}").startswith(
        "protocols.consensus.average_at_end: expected consensus.enabled with what 'policy_parameters'"
    )
    # The final average must end before the orchestrator's signals (launch.shutdown_timeout_s).
    assert only_problem(
        "protocols.consensus={enabled: true, what: policy_parameters, rounds: 10, round_timeout_s: 5.0, average_at_end: true}",
        "launch.shutdown_timeout_s=30",
    ) == (
        "protocols.consensus.average_at_end: expected the final average's bound (50 s: rounds x round_timeout_s) below "
        "launch.shutdown_timeout_s (30 s); raise launch.shutdown_timeout_s"
    )
    push_sum = load_config(TINY, [
        "protocols.consensus={enabled: true, what: policy_parameters, mode: push_sum, push_sum_duration_s: 2.0, average_at_end: true}",
        "launch.shutdown_timeout_s=30",
    ])  # fmt: skip
    assert push_sum.protocols.consensus.longest_run_s() == 2.0


def test_several_problems_are_all_reported() -> None:
    problems = problems_for("run.steps=0", "network.transport=udp", "agents.torch_threads=x")
    assert [problem.split(":")[0] for problem in problems] == ["run.steps", "agents.torch_threads", "network.transport"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("run:\n  name: x\n  steps: [1\nenv: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}:4:" in str(caught.value)
    assert "YAML syntax error" in str(caught.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="at the top level, got a list"):
        load_config(path)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------ overrides


def test_overrides_apply_with_yaml_types() -> None:
    config = load_config(
        TINY,
        [
            "run.steps=100",
            "env.kwargs.continuous_actions=false",
            "agents.learner.hidden_sizes=[8, 8]",
            "agents.learner.learning_rate=1e-3",
            "network.transport=tcp",
            "topology={kind: star, center: 2}",
        ],
    )
    assert config.run.steps == 100
    assert config.agents.learner.hidden_sizes == (8, 8)
    assert config.agents.learner.learning_rate == pytest.approx(1e-3)
    assert config.network.transport == "tcp"
    assert (config.topology.kind, config.topology.center) == ("star", 2)


def test_later_override_wins_and_source_tree_is_not_modified() -> None:
    tree = {"run": {"steps": 1}}
    result = apply_overrides(tree, ["run.steps=2", "run.steps=3"])
    assert result == {"run": {"steps": 3}}
    assert tree == {"run": {"steps": 1}}


def test_overrides_create_intermediate_maps_and_lists() -> None:
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    assert apply_overrides({}, ["network.links.0.src=agent_0"]) == {"network": {"links": [{"src": "agent_0"}]}}
    tree = {"items": [{"x": 1}]}
    assert apply_overrides(tree, ["items.0.x=5", "items.1.x=6"]) == {"items": [{"x": 5}, {"x": 6}]}


def test_override_list_link_into_a_real_config() -> None:
    config = load_config(
        TINY,
        ["network.links.0.src=agent_0", "network.links.0.dst=agent_1", "network.links.0.link={delay_s: 0.01}"],
    )
    assert config.network.link_between("agent_0", "agent_1").delay_s == 0.01
    assert config.network.link_between("agent_1", "agent_0").delay_s == 0.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("run.steps", "expected KEY=VALUE"),
        ("=5", "expected KEY=VALUE"),
        ("run..steps=5", "key segment '' is not a name"),
        ("run.steps=[1", "VALUE is not valid YAML"),
        ("run.steps.x=1", "cannot set a key inside run.steps"),
        ("network.links.3.src=a", "index 3 is out of range for network.links"),
        ("network.links.x=1", "network.links is a list; expected an index"),
    ],
)
def test_bad_override_syntax(text: str, fragment: str) -> None:
    tree = {"run": {"steps": 60}, "network": {"links": []}}
    with pytest.raises(ConfigError) as caught:
        apply_overrides(tree, [text])
    assert fragment in str(caught.value)
    assert repr(text) in str(caught.value)


def test_parse_override_parses_value_as_yaml() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a={x: [1, 2]}") == (["a"], {"x": [1, 2]})
    assert parse_override("a=") == (["a"], None)
    assert parse_override("a=b=c") == (["a"], "b=c")


# ------------------------------------------------------------------------------ resolution


def test_resolve_fills_every_default() -> None:
    config = load_config(TINY)
    resolved = resolve(config)
    assert list(resolved) == list(RunConfig.model_fields)
    assert resolved["launch"]["backend"] == "local"
    assert resolved["protocols"]["membership"] == {"heartbeat_every_s": 0.5, "timeout_s": 5.0}
    assert resolved["network"]["default_link"]["loss"] == 0.0
    assert resolved["agents"]["learner"]["gamma"] == 0.99  # not in tiny_ring.yaml
    assert resolved["env"]["default_action"] == "noop"
    assert set(resolved["nodes"]) == {"env", "agent_0", "agent_1", "agent_2"}


def test_resolve_is_stable(tmp_path: Path) -> None:
    for path in CONFIGS:
        config = load_config(path)
        resolved = resolve(config)
        reloaded = validate_config(resolved)
        assert reloaded == with_nodes(config)
        assert resolve(reloaded) == resolved
        # Through the YAML file as well, as nodes read it.
        written = write_resolved(config, tmp_path)
        assert validate_config(read_yaml(written)) == with_nodes(config)


def test_resolved_file_needs_runtime_for_nodes(tmp_path: Path) -> None:
    written = write_resolved(load_config(TINY), tmp_path)
    with pytest.raises(ConfigError, match="runtime: required in a resolved config"):
        load_resolved(written)


def test_hand_edited_node_seed_is_rejected() -> None:
    data = resolve(load_config(TINY))
    data["nodes"]["agent_1"]["seed"] += 1
    with pytest.raises(ConfigError, match="nodes: does not match the run"):
        validate_config(data)


def test_frozen() -> None:
    config = load_config(TINY)
    with pytest.raises(ValidationError, match="frozen"):
        config.run.steps = 5  # type: ignore[misc]


# ------------------------------------------------------------------------------ seeds


def test_seeds_are_derived_per_node_and_distinct() -> None:
    config = load_config(ROOT / "configs" / "4agents_ring.yaml")
    nodes = derive_nodes(config)
    assert list(nodes) == ["env", "agent_0", "agent_1", "agent_2", "agent_3"]
    assert [nodes[f"agent_{i}"].index for i in range(4)] == [0, 1, 2, 3]
    assert nodes["env"].index == 4 and nodes["env"].role == "env_server"
    seeds = {node: entry.seed for node, entry in nodes.items()}
    assert len(set(seeds.values())) == len(seeds)
    assert seeds["agent_2"] == derive_seed(config.run.seed, 2, "node")
    assert seeds["env"] == derive_seed(config.run.seed, 4, "node")


def test_seeds_follow_the_run_seed() -> None:
    def seeds(config):
        return {node: entry.seed for node, entry in derive_nodes(config).items()}

    base = seeds(load_config(TINY))
    again = seeds(load_config(TINY))
    other = seeds(load_config(TINY, ["run.seed=1"]))
    assert base == again
    assert all(base[node] != other[node] for node in base)


def test_resolved_yaml_is_readable_text(tmp_path: Path) -> None:
    written = write_resolved(load_config(TINY), tmp_path)
    text = written.read_text()
    assert text.startswith("# Resolved by `orchestrate up`")
    assert yaml.safe_load(text)["nodes"]["agent_0"]["role"] == "agent"


@pytest.mark.parametrize("word", ["on", "off", "auto"])
def test_yaml_11_boolean_words_stay_strings_in_overrides(word: str) -> None:
    # YAML 1.1 reads `off` as False; the enum field then refused it as "got False (bool)".
    assert parse_override(f"launch.live_view={word}") == (["launch", "live_view"], word)
    assert load_config(TINY, [f"launch.live_view={word}"]).launch.live_view == word


def test_yaml_11_boolean_words_stay_strings_in_config_files(tmp_path: Path) -> None:
    text = Path(TINY).read_text()
    assert 'live_view: "off"' in text
    path = tmp_path / "c.yaml"
    path.write_text(text.replace('live_view: "off"', "live_view: off"))  # unquoted, as users write it
    assert load_config(path).launch.live_view == "off"


def test_true_and_false_are_still_booleans_and_a_bool_field_still_takes_yes() -> None:
    assert parse_override("a=true") == (["a"], True) and parse_override("a=False") == (["a"], False)
    assert parse_override("a=yes") == (["a"], "yes")
    assert load_config(TINY, ["env.kwargs.continuous_actions=false"]).env.kwargs["continuous_actions"] is False


def test_an_external_goal_supervisor_is_a_node_of_the_run_with_its_own_seed(tmp_path):
    from orchestrator.config import derive_nodes, load_config
    from agent_node.registry import extra_nodes

    config = load_config(ROOT / "configs" / "goals_supervisor.yaml")
    assert config.node_ids() == ["env", "agent_0", "agent_1", "supervisor"]
    nodes = derive_nodes(config)
    assert nodes["supervisor"].role == "supervisor" and nodes["supervisor"].index == 3
    assert len({entry.seed for entry in nodes.values()}) == 4, "every node its own base seed"
    (supervisor,) = extra_nodes(config)
    assert supervisor.module == "agent_node.goals.supervisor" and supervisor.service == "goals"
    in_team = load_config(ROOT / "configs" / "goals_supervisor.yaml", ["agents.goals.supervisor.external=false"])
    assert in_team.node_ids() == ["env", "agent_0", "agent_1"]
    with pytest.raises(ConfigError, match="expected a process fault .* for the supervisor node"):
        load_config(ROOT / "configs" / "goals_supervisor.yaml",
                    ["faults.schedule=[{at_s: 1, kind: partition, groups: [[supervisor], [agent_0, agent_1]]}]"])


# ------------------------------------------------------------------------------ the main job's landmarks

MAIN_JOB = ROOT / "configs" / "4agents_ring.yaml"


def test_landmarks_are_refused_off_simple_spread_and_with_centralized_training() -> None:
    problems = problems_for("env.kwargs.continuous_actions=true", path=MAIN_JOB)
    assert any("agents.landmarks: expected env mpe2.simple_spread_v3 with continuous_actions: false" in p for p in problems)
    problems = problems_for("agents.learner={kind: sac}", path=MAIN_JOB)
    assert any("landmark-conditioned agents learn with learner kind 'dqn'" in p for p in problems)


def test_a_world_model_that_nothing_would_train_is_refused() -> None:
    # A world model beside the main job's DQN agents, with consensus averaging their policies.
    problems = problems_for("agents.world_model={kind: ensemble}", path=MAIN_JOB)
    assert problems == [
        "agents.world_model: a world model beside learner kind 'dqn' is trained only for consensus to average it, but "
        "protocols.consensus.what is 'policy_parameters'; set agents.world_model: null, or enable consensus over "
        "world_model_parameters or world_model_statistics"
    ]
    load_config(MAIN_JOB, ["agents.world_model={kind: ensemble}", "protocols.consensus={enabled: true, what: world_model_parameters}"])


def test_a_world_model_bonus_needs_a_dqn_learner_and_an_ensemble() -> None:
    averaged_model = ["protocols.consensus={enabled: true, what: world_model_parameters}", "agents.world_model_bonus=0.1"]
    load_config(MAIN_JOB, ["agents.world_model={kind: ensemble}", *averaged_model])
    problems = problems_for("agents.world_model={kind: sparse_gp}", *averaged_model, path=MAIN_JOB)
    assert "agents.world_model_bonus: the bonus is the disagreement of an ensemble's members; expected " \
           "agents.world_model.kind 'ensemble', got 'sparse_gp'" in problems
    problems = problems_for("agents.world_model_bonus=0.1", path=MAIN_JOB)
    assert any("expected agents.world_model.kind 'ensemble', got null" in p for p in problems)


def test_setting_a_learner_kind_swaps_the_section_and_keeps_the_shared_keys(capsys) -> None:
    # tiny_ring's learner is {kind: dqn, hidden_sizes: [32], batch_size: 16, buffer_size: 1000,
    # learning_starts: 32, train_every: 2, target_update_period: 20, epsilon_decay_steps: 100}.
    config = load_config(TINY, ["agents.learner.kind=sac"])
    learner = config.agents.learner
    assert learner.kind == "sac"
    assert (learner.hidden_sizes, learner.batch_size, learner.buffer_size, learner.learning_starts) == ((32,), 16, 1000, 32)
    assert learner.random_steps == 5_000  # a SAC default: the file said nothing about it
    note = capsys.readouterr().err
    assert "dropped the dqn key(s) that kind 'sac' does not take (train_every, target_update_period, epsilon_decay_steps)" in note
    assert "kept hidden_sizes, batch_size, buffer_size, learning_starts" in note
    # A key of the old kind set after the swap is still an unknown key of the new one.
    (problem,) = problems_for("agents.learner.kind=sac", "agents.learner.train_every=2")
    assert problem.startswith("agents.learner.train_every: unknown key")
    # The same for other tagged sections: a ring has no rows, a torus needs them.
    assert load_config(TINY, ["topology.kind=torus", "topology.rows=1", "topology.cols=3"]).topology.kind == "torus"


def test_swapping_a_kind_without_the_schema_changes_only_the_tag() -> None:
    tree = {"agents": {"learner": {"kind": "dqn", "train_every": 2}}}
    assert apply_overrides(tree, ["agents.learner.kind=sac"]) == {"agents": {"learner": {"kind": "sac", "train_every": 2}}}
    notes: list[str] = []
    swapped = apply_overrides(tree, ["agents.learner.kind=sac"], kind_fields=lambda path, kind: ("kind",), notes=notes)
    assert swapped == {"agents": {"learner": {"kind": "sac"}}} and len(notes) == 1
