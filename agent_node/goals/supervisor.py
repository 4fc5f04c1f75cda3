"""`python -m agent_node.goals.supervisor`: the external goal supervisor of a goal run.

ALGORITHMS.md section 2's upper bound: one draw from outside the team, given to every member.
The orchestrator starts this node (node id `supervisor`) in a run with
`agents.goals.selection: supervisor` and `agents.goals.supervisor.external: true`:

    --config <run dir>/resolved.yaml --node-id supervisor --control <endpoint>

It binds a ROUTER (its `goals` endpoint, which the orchestrator puts in every agent's directory),
registers, waits for the start like every node, and then answers each `goal.request` of a team
member with that team's `goal.assignment`: `SupervisorService` (protocols/engines/supervision.py) draws the
goal uniformly from the run's goal set (`SupervisorAssignment`, seeded from the run seed) at the
first request of a team for an episode and gives every member the same one. Agents that hear
nothing within `agents.goals.supervisor.timeout_s` pursue a goal of their own.

It learns nothing, but it keeps a checkpoint (`nodes/supervisor/checkpoints/`, `latest.json` the
newest): its generator's state, the draws of the episodes it still remembers and its counters (as
of that draw: requests answered from a kept draw since are not saved), written atomically and
sealed after every new draw and before that draw's answer goes out, in `agents.keep_generations`
generations (`SupervisorPersistence`). Restarted (`faults.restart.roles` lists `supervisor`, or a
scheduled restart), it restores the newest good one, so a member asking after the restart gets
the goal its team was given before, and the draws go on as if it had never stopped. A damaged
checkpoint is handled as an agent's is (agent_node/persistence.py, protocols/storage/durable_state.py).

It writes `nodes/supervisor/metrics.jsonl` (`supervisor/requests`, `supervisor/teams_assigned`,
..., and the `security/*` drop counters of its sockets) every status period and at the end, reports status like any node and exits 0 on
`control.shutdown`. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("supervisor_node")

CHECKPOINT_DIRNAME = "checkpoints"
_CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, draws: Any, service: Any) -> None:
    """Write the supervisor's state to `path` atomically and sealed (agent_node/persistence.py: a
    kill mid-write leaves the previous file, damage later fails the seal); a full disk raises
    FileWriteError naming `path`."""
    from protocols.storage.files import atomic_write

    state = {"format": _CHECKPOINT_FORMAT, "draws": draws.state_dict(), "service": service.state_dict()}
    atomic_write(path, lambda file: file.write(json.dumps(state).encode()), sealed=True)


def restore_checkpoint(path: Path, draws: Any, service: Any) -> bool:
    """Load `path` into `draws` (SupervisorAssignment) and `service` (SupervisorService) if it
    exists; False when there is none (a first start). A file that fails its seal or cannot be
    restored is a `DamagedStateError` naming it and why, never a silent fresh start (which would
    give teams goals they were not given)."""
    from protocols.storage.files import read_sealed
    from protocols.storage.durable_state import DamagedStateError

    if not path.exists():
        return False
    payload = read_sealed(path)
    try:
        state = json.loads(payload)
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"expected a JSON object with format {_CHECKPOINT_FORMAT}")
        draws.load_state_dict(state["draws"])
        service.load_state_dict(state["service"])
    except (ValueError, KeyError, TypeError) as error:
        raise DamagedStateError(path, f"sealed, but the supervisor's state cannot be restored from it: {error}") from None
    return True


class SupervisorPersistence:
    """The supervisor's checkpoints (`nodes/supervisor/checkpoints/step-<draws>.json`, `latest.json`
    the newest), kept as an agent's are (agent_node/persistence.py `Generations`): the last
    `keep_generations` good saves, named by the number of team goals drawn; a damaged newest one is
    set aside and the newest good one restored, and `notice` says which and how many draws were
    lost; none good: `DamagedStateError`, or with `start_fresh` a fresh start, said."""

    def __init__(self, node_dir: Path, keep_generations: int = 2, start_fresh: bool = False) -> None:
        from agent_node.persistence import Generations

        self.generations = Generations(node_dir / CHECKPOINT_DIRNAME, ".json", "latest.json", keep_generations)
        self.start_fresh = start_fresh
        self.notice: Any = None  # a protocols.storage.durable_state.StateNotice once `restore` met damage

    def save(self, draws: Any, service: Any) -> None:
        self.generations.save(service.teams_assigned, lambda path: save_checkpoint(path, draws, service))

    def restore(self, draws: Any, service: Any) -> bool:
        """Restore the newest good generation into `draws` and `service`; False when there is none."""
        from agent_node.persistence import state_notice

        for leftover in self.generations.remove_leftover_temporaries():
            log.info("removed %s, left by a save that was interrupted", leftover)
        restored = self.generations.restore_newest(lambda path: restore_checkpoint(path, draws, service),
                                                   start_fresh=self.start_fresh)
        step = 0 if restored is None else restored[0]
        self.notice = state_notice([] if restored is None else restored[2], self.generations.started_fresh,
                                   restored_step=step, restored="nothing" if restored is None else f"checkpoint of {step} draws",
                                   primary_suffix=".json", unit="team goal draws")
        return restored is not None


class OrchestratedSupervisor:
    """The supervisor in the shared service loop (agent_node/service_loop.py): each team
    member's `goal.request` answered with its team's `goal.assignment`."""

    role = "supervisor"
    log = log

    def __init__(self, run: Any, identity: Any, draws: Any, service: Any, metrics: Any = None) -> None:
        self.run, self.identity, self.draws, self.service, self.metrics = run, identity, draws, service, metrics
        self.persistence = SupervisorPersistence(identity.node_dir, run.agents.keep_generations,
                                                 start_fresh=run.run.on_corrupt_state == "start_fresh")
        self.inbox = self.hub = None  # its ROUTER and the node's hub, from `bind`

    @property
    def state_notice(self) -> Any:
        """What its restore met (agent_node/service_loop.py puts it in the node's control.ready)."""
        return self.persistence.notice

    def bind(self, hub: Any) -> dict[str, str]:
        from protocols.run.node_config import bind_address

        service, run, node_id = self.service, self.run, self.identity.node_id
        self.hub = hub
        if self.persistence.restore(self.draws, service):
            log.info("restored checkpoint %s: %d team goals drawn, %d requests answered", self.persistence.generations.latest,
                     service.teams_assigned, service.requests)
        if (notice := self.persistence.notice) is not None:  # damaged files skipped or set aside: said, and counted
            log.error("%s", notice.what)
            if self.metrics is not None:
                self.metrics.write(notice.restored_from_step, notice.metrics())
        self.inbox = hub.bind_router(bind_address(run, node_id, "goals"), name="goals", advertise_host=run.network.advertised_host())
        log.info("supervisor %s running at %s: one goal per team and episode from %s goals", node_id, self.inbox.endpoint,
                 run.agents.goals.goal_set)
        return {"goals": self.inbox.endpoint}

    def handle(self, channel: Any, envelope: Any) -> None:
        from protocols.engines.supervision import GoalRequest

        service = self.service
        if not isinstance(envelope.message, GoalRequest):
            # Counted (security/refused_messages) and logged once per source per 5 s.
            self.hub.refusals.record(envelope.sender, envelope.msg_type, "the supervisor takes goal.request only")
            return
        drawn_before = service.teams_assigned
        answers = service.on_message(envelope.sender, envelope.message, time.monotonic())
        if service.teams_assigned != drawn_before:
            # Saved before the answer leaves: no member ever holds a goal that a
            # restarted supervisor would not give its teammates too.
            self.persistence.save(self.draws, service)
        for _, assignment in answers:
            self.inbox.reply(envelope, assignment)

    def after_message(self) -> None:
        # Everything it saves is saved with the draw that changed it. The aggregated lines of a
        # flood of invalid messages go out on their 5 s timer although `hub.wait` may not come soon.
        self.hub.flush_logs()

    def status(self) -> tuple[int, float, dict[str, float]]:
        return self.service.teams_assigned, self.service.requests, self.service.metrics()

    def status_metrics(self) -> tuple[int, dict[str, float]]:
        # With the security drop counters (security/*), like every node's.
        return self.service.teams_assigned, {**self.service.metrics(), **self.hub.link_metrics()}

    def finish(self, reason: str) -> None:
        pass

    def final_metrics(self, reason: str) -> tuple[int, dict[str, float]]:
        service = self.service
        log.info("supervisor stopping (%s): %d requests, %d team goals drawn", reason, service.requests, service.teams_assigned)
        return service.teams_assigned, {**service.metrics(), **self.hub.link_metrics()}


def run_in_orchestrated_run(config_path: str, node_id: str, control_endpoint: str) -> int:
    from agent_node.config import load_agent_side_config
    from agent_node.goals.modules import SupervisorAssignment
    from agent_node.service_loop import run_service
    from protocols.goal_spaces.goal_space import goal_set
    from protocols.storage.metrics import MetricsWriter
    from protocols.engines.supervision import SupervisorService

    if (loaded := load_agent_side_config(config_path, node_id, "supervisor")) is None:
        return 2
    run, identity = loaded
    goals = run.agents.goals
    if goals is None or goals.selection != "supervisor" or not goals.supervisor.external:
        log.error("a supervisor node runs only with agents.goals.selection 'supervisor' and supervisor.external true")
        return 2
    draws = SupervisorAssignment(goal_set(goals.goal_set, goals.num_landmarks), seed=identity.seed("goals/supervisor"))
    service = SupervisorService(lambda episode, team: draws.assign(episode, team)[team[0]])
    metrics = MetricsWriter(identity.node_dir / "metrics.jsonl", identity.run_dir / "tb" / identity.node_id)
    return run_service(OrchestratedSupervisor(run, identity, draws, service, metrics), run, identity, control_endpoint, metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node.goals.supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="resolved.yaml of the run")
    parser.add_argument("--control", required=True, help="the orchestrator's control endpoint")
    parser.add_argument("--node-id", default="supervisor")
    args = parser.parse_args(argv)
    return run_in_orchestrated_run(args.config, args.node_id, args.control)


if __name__ == "__main__":
    raise SystemExit(main())
