"""Centralized training as a run setting: the `training` section's schema and refusals,
the `learner` node in the run's nodes and launch plan, the agent side (`CentralizedDQNActor`) and
the learner node's message handling (`LearnerService`), without processes."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agent_node.algos.config import DQNConfig
from agent_node.ctde.client import CentralizedDQNActor
from agent_node.ctde.learner_node import LearnerService, make_core_factory
from agent_node.roles import Transition
from agent_node.ctde.config import learner_schedule, mixer_config
from orchestrator.config import derive_nodes, load_config, load_resolved
from orchestrator.plan import build_plan
from orchestrator.rundir import prepare_run
from protocols.run.config_errors import ConfigError
from protocols.codec.ctde import CTDEJoin, CTDEParams, CTDETransitions
from protocols.codec.spaces import encode_space

ROOT = Path(__file__).resolve().parents[2]
QMIX = ROOT / "configs" / "tiny_qmix.yaml"
RING = ROOT / "configs" / "tiny_ring.yaml"


# ---------------------------------------------------------------------------------- the config


def test_the_learner_node_joins_the_run_after_the_agents_without_shifting_their_seeds():
    centralized = load_config(QMIX)
    decentralized = load_config(QMIX, ["training={mode: decentralized}"])
    assert centralized.node_ids() == ["env", "agent_0", "agent_1", "agent_2", "learner"]
    assert decentralized.node_ids() == ["env", "agent_0", "agent_1", "agent_2"]
    nodes, plain = derive_nodes(centralized), derive_nodes(decentralized)
    assert nodes["learner"].role == "learner" and nodes["learner"].index == 4
    assert {node: entry for node, entry in nodes.items() if node != "learner"} == plain


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["agents.learner={kind: sac}"], "agents.learner.kind: centralized training trains the agents' DQN"),
        (["agents.learner.target_tau=0.5"], "agents.learner.target_tau: the centralized learner copies"),
        (["training.mixer=vdn", "training.mixing_embed_dim=16"], "mixing_embed_dim set QMIX's mixing network; mixer 'vdn' has none"),
        (["agents.learning=false"], "agents.learning: centralized training needs learning agents"),
        (["agents.record_dataset=true"], "agents.record_dataset: not implemented with centralized training"),
        (["protocols.consensus={enabled: true, what: policy_parameters}"], "protocols.consensus.enabled: the learner node sets"),
        (["faults.schedule=[{at_s: 1, kind: partition, nodes: [learner]}]"], "expected a process fault .* for the learner node, got 'partition'"),
        (["faults.restart={policy: on-failure}", "network.transport=tcp"], "faults.restart: expected network.transport .ipc. to restart learner"),
        (["training.mode=federated"], "training.mode: expected one of 'decentralized', 'centralized', got 'federated'"),
        (["training.mixers=qmix"], r"training.mixers: unknown key; valid keys: mode, mixer, .* \(did you mean .mixer.\?\)"),
    ],
)
def test_combinations_the_learner_node_does_not_implement_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(QMIX, overrides)


@pytest.mark.parametrize("overrides", [
    ["faults.restart={policy: on-failure}"],
    ["faults.schedule=[{at_s: 1, kind: restart, nodes: [agent_0]}]"],
    ["faults.schedule=[{at_s: 1, kind: restart, nodes: [learner]}, {at_s: 2, kind: kill, nodes: [learner]}]"],
])
def test_agents_and_the_learner_node_may_be_restarted_in_a_centralized_run(overrides):
    config = load_config(QMIX, overrides)
    assert config.training.mode == "centralized"


def test_the_learner_is_a_node_id_only_when_training_centrally():
    load_config(QMIX, ["network.links=[{node: learner, link: {delay_s: 0.001}}]"])
    with pytest.raises(ConfigError, match="network.links.0.node: expected a node id .*, got 'learner'"):
        load_config(RING, ["network.links=[{node: learner, link: {delay_s: 0.001}}]"])


def test_the_learner_node_takes_the_agents_dqn_hyperparameters():
    config = load_config(QMIX, ["agents.learner.loss=mse", "training.hypernet_layers=1"])
    dqn = config.agents.learner
    mixer = mixer_config(config.training, dqn)
    assert (mixer.mixer, mixer.agent_hidden_sizes, mixer.batch_size, mixer.learning_rate) == ("qmix", (32,), 32, dqn.learning_rate)
    assert (mixer.target_update_period, mixer.loss, mixer.hypernet_layers, mixer.double_q) == (50, "mse", 1, True)
    assert learner_schedule(dqn) == {"replay_capacity": 5000, "learning_starts": 64, "gradient_steps_per_row": 1.0}
    assert learner_schedule(DQNConfig(train_every=4, learning_starts=10, batch_size=32))["learning_starts"] == 32


def test_the_plan_launches_the_learner_node_with_its_own_threads(tmp_path):
    resolved, run_dir = prepare_run(load_config(QMIX, ["training.torch_threads=2"]), tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    learner = plan.node("learner")
    assert learner.argv[1:3] == ("-m", "agent_node.ctde.learner_node") and learner.argv[0] == sys.executable
    assert learner.argv[3:] == ("--config", str(run_dir / "resolved.yaml"), "--node-id", "learner", "--control", plan.control_endpoint)
    assert learner.env["OMP_NUM_THREADS"] == "2" and plan.node("agent_0").env["OMP_NUM_THREADS"] == "1"
    from protocols.net.auth import load_node_keys

    assert load_node_keys(resolved.runtime.keys_dir, "learner") is not None  # the learner signs and verifies like any node
    assert load_resolved(run_dir / "resolved.yaml").nodes["learner"].role == "learner"


def test_a_shared_checkpoint_needs_a_shared_policy_and_excludes_per_agent_ones():
    with pytest.raises(ConfigError, match="parameter-shared policy"):
        load_config(RING, ["agents.load_shared_checkpoint=x.pt"])
    shared = "agents.learner={kind: shared_dqn, max_obs_dim: 18, max_agents: 4}"
    with pytest.raises(ConfigError, match="give one"):
        load_config(RING, [shared, "agents.load_shared_checkpoint=x.pt", "agents.load_checkpoints=d"])
    assert load_config(RING, [shared, "agents.load_shared_checkpoint=x.pt"]).agents.load_shared_checkpoint == "x.pt"


# ---------------------------------------------------------------------------------- the agent side

OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACTIONS = gym.spaces.Discrete(3)
STATE = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
SMALL = DQNConfig(hidden_sizes=(8,), batch_size=4, buffer_size=100, learning_starts=10, epsilon_decay_steps=20)


def actor(sent: list, index: int = 1) -> CentralizedDQNActor:
    return CentralizedDQNActor(SMALL, OBS, ACTIONS, STATE, seed=3, agent_index=index, send=sent.append,
                               schedule=learner_schedule(SMALL), params_every=5)


def transition(rows: int = 2) -> Transition:
    rng = np.random.default_rng(0)
    return Transition(
        obs=rng.normal(size=(rows, 4)).astype(np.float32), action=np.arange(rows) % 3, reward=np.ones(rows, np.float32),
        next_obs=rng.normal(size=(rows, 4)).astype(np.float32), terminated=np.zeros(rows, bool), truncated=np.zeros(rows, bool),
        global_state=np.zeros((rows, 6), np.float32), next_global_state=np.ones((rows, 6), np.float32), copy_index=np.arange(rows),
    )


def test_the_actor_announces_itself_streams_by_step_and_decays_epsilon_over_the_rows_it_sent():
    sent: list = []
    agent = actor(sent)
    agent.hello()
    assert isinstance(sent[0], CTDEJoin) and sent[0].agent_index == 1 and sent[0].state_space == encode_space(STATE)
    assert agent.epsilon == 1.0
    agent.observe_at(7, transition())
    message = sent[1]
    assert isinstance(message, CTDETransitions) and (message.agent_index, message.env_step) == (1, 7)
    np.testing.assert_array_equal(message.copy_index, [0, 1])
    assert agent.rows_sent == 2 and agent.epsilon == pytest.approx(1.0 - 0.95 * 2 / 20)
    assert agent.gradient_steps_due() == 0 and agent.update() == {}
    with pytest.raises(TypeError, match="observe_at"):
        agent.observe(transition())
    with pytest.raises(ValueError, match="global_view=True"):
        agent.observe_at(8, Transition(**{**transition().__dict__, "global_state": None}))


def test_the_actor_holds_while_its_rows_in_flight_owe_more_than_its_bound_and_the_learners_acknowledgements_free_it():
    sent: list = []
    agent = actor(sent)
    for step in range(30):  # 60 rows, none acknowledged yet
        agent.observe_at(step, transition())
    assert [m.rows_sent for m in sent[-2:]] == [58, 60]
    assert agent.rows_in_flight() == 60 and agent.learner_steps_owed() == 60
    assert agent.lagging(bound=54) and not agent.lagging(bound=55)  # 60 > 54 + 5
    params = {name: np.zeros_like(value) for name, value in agent.dqn.get_params().items()}
    assert agent.on_params(CTDEParams(gradient_step=10, params=params, rows_taken=40))
    assert agent.rows_in_flight() == 20 and not agent.lagging(bound=15) and agent.lagging(bound=14)  # 20 > 14 + 5
    assert np.all(agent.dqn.q_values(np.ones((2, 4), np.float32)) == 0)
    assert not agent.on_params(CTDEParams(gradient_step=10, params=params))  # not newer: ignored
    # A bare acknowledgement frees the agent without loading (or counting) parameters.
    assert not agent.on_params(CTDEParams(gradient_step=3, params={}, rows_taken=60))
    assert agent.rows_in_flight() == 0 and agent.receiver.last_gradient_step == 10
    counters = agent.counters()
    assert counters["ctde/params_updates"] == 1 and counters["ctde/params_stale"] == 1 and counters["ctde/rows_in_flight"] == 0
    # Held, the node joins again: the join carries the rows sent, for the learner to acknowledge.
    agent.hello()
    assert isinstance(sent[-1], CTDEJoin) and sent[-1].rows_sent == 60
    restored = actor([])
    restored.load_state_dict(agent.state_dict())
    assert restored.rows_sent == 60 and restored.receiver.last_gradient_step == 10 and restored.rows_in_flight() == 0


# ---------------------------------------------------------------------------------- the learner node's handling


_CLOCK = itertools.count(1)  # the senders' sent_at: envelopes are sent in the order they are made


class Envelope:
    """What LearnerService reads of a received envelope: by default from the routing id `sender`."""

    def __init__(self, message, sender: str, *, routing_id: str | None = None) -> None:
        self.message, self.identities, self.msg_type = message, [(routing_id or sender).encode()], message.MSG_TYPE
        self.header = type("Header", (), {"sender": sender, "sent_at": float(next(_CLOCK))})()


class Inbox:
    """Records what the service sends (the ROUTER it would reply through)."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, bytes]] = []

    def send(self, message, *, to) -> bool:
        self.sent.append((message, to))
        return True


def service(num_agents: int = 2) -> tuple[LearnerService, Inbox]:
    inbox = Inbox()
    factory = make_core_factory(mixer_config(load_config(QMIX).training, SMALL), num_agents, seed=0, replay_capacity=100,
                                learning_starts=4, gradient_steps_per_row=1.0, params_every=2)
    return LearnerService(num_agents, factory, inbox), inbox


def test_the_learner_builds_on_the_first_join_answers_each_join_and_trains_on_joined_steps():
    learner, inbox = service()
    for index in (0, 1):
        join = actor([], index=index).join
        assert learner.handle(Envelope(join, f"agent_{index}"))
    assert [(m.gradient_step, to) for m, to in inbox.sent] == [(0, b"agent_0"), (0, b"agent_1")]
    inbox.sent.clear()
    for step in range(4):
        for index in (0, 1):
            sent: list = []
            actor(sent, index=index).observe_at(step, transition())
            assert learner.handle(Envelope(sent[0], f"agent_{index}"))
    metrics = learner.metrics()
    assert metrics["learner/joint_rows"] == 8 and metrics["learner/gradient_steps"] == 6  # from the 4th row on
    broadcasts = [(m, to) for m, to in inbox.sent if m.params]
    assert {to for _, to in broadcasts} == {b"agent_0", b"agent_1"} and all(m.gradient_step in (2, 4, 6) for m, _ in broadcasts)


def test_the_learner_refuses_transitions_before_any_join_other_spaces_and_unknown_indices():
    learner, inbox = service()
    sent: list = []
    actor(sent, index=0).observe_at(0, transition())
    assert not learner.handle(Envelope(sent[0], "agent_0"))
    assert learner.handle(Envelope(actor([], index=0).join, "agent_0"))
    other = CentralizedDQNActor(SMALL, gym.spaces.Box(-1, 1, (5,), np.float32), ACTIONS, STATE, seed=0, agent_index=1,
                                send=[].append, schedule=learner_schedule(SMALL), params_every=5)
    assert not learner.handle(Envelope(other.join, "agent_1"))
    assert not learner.handle(Envelope(actor([], index=2).join, "agent_2"))
    assert learner.metrics()["learner/messages_refused"] == 3 and learner.metrics()["learner/agents_joined"] == 1


def test_the_learner_acknowledges_joins_and_rows_that_do_not_train_yet():
    learner, inbox = service()
    join = actor([], index=0).join
    assert learner.handle(Envelope(CTDEJoin(**{**vars(join), "rows_sent": 7}), "agent_0"))
    answer, to = inbox.sent[-1]
    assert to == b"agent_0" and answer.rows_taken == 7 and answer.params  # everything sent before the join
    inbox.sent.clear()
    # Agent 0 alone: its rows never join (agent 1 is gone), so no parameters go out, but every
    # 2 rows (params_every 2 at one gradient step per row) it hears that they arrived.
    sent: list = []
    streaming = actor(sent, index=0)
    streaming.rows_sent = 7
    for step in range(3):
        streaming.observe_at(step, transition())
        assert learner.handle(Envelope(sent[-1], "agent_0"))
    assert [(m.params, m.rows_taken, to) for m, to in inbox.sent] == [({}, 9, b"agent_0"), ({}, 11, b"agent_0"), ({}, 13, b"agent_0")]
    assert learner.metrics()["learner/acks_sent"] == 3 and learner.metrics()["learner/gradient_steps"] == 0


def test_parameters_go_where_the_agents_newest_message_came_from():
    """A restarted agent connects under a routing id of its new incarnation and joins; what its
    dead predecessor sent before (unread until now, from a connection that is gone) must not send
    the parameters back there. A restarted learner learns the routes from transitions alone."""
    learner, inbox = service()
    old, new = "agent_0~0000000000000000", "agent_0~ffffffffffffffff"
    assert learner.handle(Envelope(actor([], index=1).join, "agent_1"))
    sent: list = []
    dead = actor(sent, index=0)
    dead.observe_at(0, transition())
    leftover_transitions = Envelope(sent[-1], "agent_0", routing_id=old)
    leftover_join = Envelope(dead.join, "agent_0", routing_id=old)
    assert learner.handle(Envelope(actor([], index=0).join, "agent_0", routing_id=new))
    assert learner.handle(leftover_join) and learner.handle(leftover_transitions)
    assert learner.routes[0] == new.encode()
    assert inbox.sent[-1][1] == new.encode()  # the leftover join was answered at the new connection

    restarted, _ = service()
    sent.clear()
    actor(sent, index=0).observe_at(1, transition())
    restarted.spaces, restarted.core = learner.spaces, learner.core  # as LearnerPersistence.restore: no joins come again
    assert restarted.handle(Envelope(sent[-1], "agent_0", routing_id=new))
    assert restarted.routes == {0: new.encode()}


def _train(learner: LearnerService, steps: range) -> None:
    for step in steps:
        for index in (0, 1):
            sent: list = []
            agent = actor(sent, index=index)
            agent.rows_sent = 2 * step
            agent.observe_at(step, transition())
            assert learner.handle(Envelope(sent[0], f"agent_{index}"))


def test_a_restarted_learner_restores_its_networks_optimizer_and_replay_and_trains_on_as_if_never_stopped(tmp_path):
    from agent_node.ctde.learner_node import LearnerPersistence

    def persistence() -> LearnerPersistence:
        return LearnerPersistence(tmp_path, checkpoint_every_steps=5, replay_save_every_steps=5)

    learner, _ = service()
    saving = persistence()
    assert learner.handle(Envelope(actor([], index=0).join, "agent_0"))
    saving.maybe_save(learner)  # the first checkpoint as soon as the core exists: the spaces
    assert saving.checkpoint_path.exists() and not saving.replay_path.exists()
    fresh, _ = service()
    assert persistence().restore(fresh) is not None and fresh.core.learner.gradient_steps == 0 and fresh.spaces == learner.spaces

    _train(learner, range(10))
    saving.save_all(learner)
    steps = learner.core.learner.gradient_steps
    assert steps == 20 - 4 + 2  # 20 rows; the message that fills learning_starts brings 2

    restarted, inbox = service()
    restored = persistence().restore(restarted)
    assert restored == {"learner/restored_gradient_step": 18.0, "learner/restored_env_step": 9.0, "learner/restored_replay_rows": 20.0}
    assert restarted.core.params_sent == learner.core.params_sent and restarted.last_env_step == 9
    # It answers transitions without a join (the agents do not join again) and trains on exactly
    # as the learner that never stopped: same networks, optimizer moments, replay and sampling.
    _train(learner, range(10, 14))
    _train(restarted, range(10, 14))
    assert restarted.core.learner.gradient_steps == learner.core.learner.gradient_steps == steps + 8
    for index in (0, 1):
        for name, value in learner.core.learner.agent_params(index).items():
            np.testing.assert_array_equal(restarted.core.learner.agent_params(index)[name], value)
    assert {to for _, to in inbox.sent} == {b"agent_0", b"agent_1"}


def test_a_learner_checkpoint_for_another_agent_count_is_refused_naming_both(tmp_path):
    from agent_node.ctde.learner_node import LearnerPersistence

    learner, _ = service()
    assert learner.handle(Envelope(actor([], index=0).join, "agent_0"))
    LearnerPersistence(tmp_path, checkpoint_every_steps=5, replay_save_every_steps=5).save_all(learner)
    three, _ = service(num_agents=3)
    with pytest.raises(ValueError, match="saved for 2 agents, this run has 3"):
        LearnerPersistence(tmp_path, checkpoint_every_steps=5, replay_save_every_steps=5).restore(three)


def test_a_restarted_learner_falls_back_past_a_damaged_checkpoint_and_replay_to_the_older_generation(tmp_path):
    from agent_node.ctde.learner_node import LearnerPersistence
    from protocols.storage.durable_state import DamagedStateError

    def persistence(**kwargs) -> LearnerPersistence:
        return LearnerPersistence(tmp_path, checkpoint_every_steps=5, replay_save_every_steps=5, keep_generations=2, **kwargs)

    learner, _ = service()
    saving = persistence()
    assert learner.handle(Envelope(actor([], index=0).join, "agent_0"))
    _train(learner, range(6))
    saving.save_all(learner)  # env step 5
    _train(learner, range(6, 12))
    saving.save_all(learner)  # env step 11
    checkpoints, replays = tmp_path / "checkpoints", tmp_path / "replay"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.pt", "step-000000005.pt", "step-000000011.pt"]
    newest = checkpoints / "step-000000011.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (replays / "step-000000011.npz").write_bytes(np.random.default_rng(0).bytes(4096))

    restarted, _ = service()
    restoring = persistence()
    restored = restoring.restore(restarted)
    assert restored["learner/restored_env_step"] == 5.0 and restarted.last_env_step == 5
    notice = restoring.notice
    assert notice.restored_from_step == 5 and notice.steps_lost == 6 and notice.damaged_files == 2
    assert str(newest) in notice.what and "no Parley seal" in notice.what and "6 env steps of learning lost" in notice.what
    assert (checkpoints / "step-000000011.pt.damaged").exists() and (replays / "step-000000011.npz.damaged").exists()

    # Every generation damaged: it stops (the service loop exits 3), touching nothing ...
    for path in checkpoints.glob("step-*.pt"):
        path.write_bytes(b"")
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.is_file()}
    with pytest.raises(DamagedStateError, match="no good generation is left"):
        persistence().restore(service()[0])
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.is_file()} == before
    # ... or, with run.on_corrupt_state: start_fresh, builds its learner from the first join again.
    fresh, _ = service()
    starting = persistence(start_fresh=True)
    assert starting.restore(fresh) is None and fresh.core is None
    assert starting.notice.started_fresh and starting.notice.restored_from_step == 0
