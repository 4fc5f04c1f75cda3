"""A restarted env server resumes from its resume point (env_server/resume.py), over real
sockets in one process: two servers in turn on the same resume file, two bare clients that
join each. The first server "dies" in the middle of an evaluation; the second resumes at its
step, runs that evaluation again, then trains on from the same step with fresh episodes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from env_server.registry import make_env
from env_server.resume import ResumeFile, ResumePoint
from env_server.server import EnvServer, LockstepRules
from env_server.vector import VectorizedParallelEnv
from protocols.codec import messages as m
from protocols.net.transport import Hub
from tests.integration.lockstep_paths import env_client, take_welcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KWARGS = {"N": 2, "max_cycles": 5, "continuous_actions": False}


def start_server(tmp_path, endpoint: str, transport: str) -> tuple[EnvServer, Hub]:
    build = lambda: make_env("mpe2.simple_spread_v3", KWARGS, construction_seed=0)
    hub = Hub(sender="env", run_id="test")
    server = EnvServer(
        VectorizedParallelEnv(build, 2, autoreset=True), hub=hub, env_name="mpe2.simple_spread_v3",
        bind_address=endpoint, rules=LockstepRules(max_steps=12, step_deadline_s=5.0, join_deadline_s=5.0,
                                                   eval_every_steps=4, eval_start_step=4, transport=transport),
        seed=11, eval_seed=12, default_action_seed=13,
        eval_envs=VectorizedParallelEnv(build, 1, autoreset=False), metrics_path=tmp_path / "metrics.jsonl",
        resume=ResumeFile(tmp_path / "resume.bin"),
    )  # fmt: skip
    return server, hub


class Clients:
    """Two bare agents, each driving one env agent; `exchange` pumps the server meanwhile."""

    def __init__(self, hub: Hub, server: EnvServer, tag: str, transport: str) -> None:
        self.server = server
        self.channels = [hub.connect_dealer(server.endpoint, name=f"{tag}{i}", identity=f"agent_{i}") for i in range(2)]
        clients = [env_client(transport, f"agent_{i}", [i]) for i in range(2)]  # (tests/integration/lockstep_paths.py)
        for client, channel in zip(clients, self.channels):
            channel.send(client.join())
        self.welcomes = self.receive()
        for client, channel, welcome in zip(clients, self.channels, self.welcomes):
            take_welcome(channel, client, welcome, transport)

    def receive(self) -> list:
        answers = []
        for channel in self.channels:
            deadline = time.monotonic() + 10.0
            while (message := channel.wait_for(object, timeout_s=0.005)) is None:
                assert time.monotonic() < deadline, "no answer from the env server within 10 s"
                self.server.poll_once(0.005)
            answers.append(message)
        return answers

    def reset(self) -> list[m.EnvObservation]:
        for channel in self.channels:
            channel.send(m.EnvReset())
        return self.receive()

    def act(self, observations: list[m.EnvObservation]) -> list[m.EnvObservation]:
        for i, (channel, seen) in enumerate(zip(self.channels, observations)):
            action = np.zeros(len(seen.episode_start), np.int64)
            channel.send(m.EnvAction(step=seen.step, actions={f"agent_{i}": action}, evaluation=seen.evaluation))
        return self.receive()

    def close(self, hub: Hub) -> None:
        for channel in self.channels:
            hub.close_channel(channel)


def test_a_resumed_server_reruns_the_interrupted_evaluation_and_trains_on_from_its_step(tmp_path, hub, lockstep_transport):
    endpoint = f"ipc://{tmp_path}/env.sock"
    server, server_hub = start_server(tmp_path, endpoint, lockstep_transport)
    assert server.resumption.resumed_from is None and server.resumption.incarnation == 0
    clients = Clients(hub, server, "first", lockstep_transport)
    assert [w.step for w in clients.welcomes] == [0, 0]
    first_start = seen = clients.reset()
    for _ in range(4):  # steps 0..3; after step 4 the first evaluation begins
        seen = clients.act(seen)
    assert all(o.evaluation for o in seen) and server.evaluating
    seen = clients.act(seen)  # one evaluation step, then the server dies (no cleanup of the file)
    server.close()
    server_hub.close()
    clients.close(hub)
    assert ResumeFile(tmp_path / "resume.bin").load() == ResumePoint(
        step=4, episodes=0, last_return=None, evaluations_completed=0, evaluation_running=True, incarnation=0)

    server, server_hub = start_server(tmp_path, endpoint, lockstep_transport)
    try:
        assert server.resumption.resumed_from.step == 4 and server.resumption.incarnation == 1 and server.counters.steps == 4
        clients = Clients(hub, server, "second", lockstep_transport)
        assert [w.step for w in clients.welcomes] == [4, 4], "the welcome says where the run resumed"
        seen = clients.reset()
        assert all(o.evaluation and o.step == 0 for o in seen), "the interrupted evaluation runs again, from its start"
        while seen[0].evaluation:
            seen = clients.act(seen)
        # Training resumes at step 4, every copy at the start of a new episode; the seed of this
        # incarnation, not the run's first one, drew it.
        assert [o.step for o in seen] == [4, 4] and all(o.episode_start.all() for o in seen)
        assert not np.array_equal(seen[0].observations["agent_0"], first_start[0].observations["agent_0"])
        seen = clients.act(seen)
        assert [o.step for o in seen] == [5, 5]
        while not seen[0].run_finished:
            seen = clients.act(seen)
        assert server.step == server.counters.steps == 12
        point = ResumeFile(tmp_path / "resume.bin").load()
        assert (point.step, point.incarnation, point.evaluations_completed, point.evaluation_running) == (12, 1, 3, False)
        # Two copies, 5-step episodes: none ended before the restart at step 4; after it, both
        # copies' first episodes ended at step 9 and the next ones run past the budget.
        assert point.episodes == 2
    finally:
        server.close()
        server_hub.close()
    evaluations = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                   if "eval/return_mean" in line]
    assert evaluations == [4, 8, 12], "each evaluation once: the interrupted one wrote nothing"


def test_an_evaluation_whose_summary_was_written_before_the_kill_is_not_run_again(tmp_path, hub, lockstep_transport):
    # The server writes an evaluation's rows, then its summary, then the point that counts it
    # done. A kill between the last two leaves the point of the evaluation's start: recreated here.
    endpoint = f"ipc://{tmp_path}/env.sock"
    server, server_hub = start_server(tmp_path, endpoint, lockstep_transport)
    clients = Clients(hub, server, "first", lockstep_transport)
    seen = clients.reset()
    for _ in range(4):
        seen = clients.act(seen)
    while seen[0].evaluation:
        seen = clients.act(seen)
    server.close()
    server_hub.close()
    clients.close(hub)
    resume_file = ResumeFile(tmp_path / "resume.bin")
    assert resume_file.load().evaluations_completed == 1
    resume_file.save(ResumePoint(step=4, evaluations_completed=0, evaluation_running=True, incarnation=0))
    resume_file.close()

    server, server_hub = start_server(tmp_path, endpoint, lockstep_transport)
    try:
        assert not server.resumption.rerun_evaluation and server.evaluator.schedule.completed == 1
        clients = Clients(hub, server, "second", lockstep_transport)
        seen = clients.reset()
        assert [(o.evaluation, o.step) for o in seen] == [(False, 4), (False, 4)], "training resumes, no evaluation again"
        while not seen[0].run_finished:
            seen = clients.act(seen)
    finally:
        server.close()
        server_hub.close()
    summaries = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval/return_mean" in line]
    assert [(row["step"], row["eval/number"]) for row in summaries] == [(4, 1.0), (8, 2.0), (12, 3.0)]
