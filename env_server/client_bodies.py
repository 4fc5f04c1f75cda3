"""How each client's lockstep bodies travel, a part of the env server (env_server/part.py).

A client that asks at join gets env.observation and env.action as packed bodies
(protocols/codec/packed.py, `grant_packed`): the channel packs and unpacks them, so nothing above it
sees the difference. A packed client on this host may get them through shared memory instead
(protocols/net/shm_lockstep.py, `grant_shared_memory`, `env.transport`): the barrier's broadcast then
writes its rows straight into its slot (`deliver`), without the per-client message, and its
actions come out of the channel as any message does, into the core's one dispatch.

`env.transport` is checked when the server starts (`TransportRefused`, before it binds: shm needs
packable spaces and no forwarded infos), and segments a killed server of this run left behind
are removed then.
"""

from __future__ import annotations

import logging
from typing import Any

from env_server.barrier import Client, Refused
from env_server.part import ServerPart, ServerServices
from env_server.vector import BatchedStep, VectorizedParallelEnv, packing_refusal
from protocols.codec import messages as m
from protocols.codec.packed import PackedLayout
from protocols.net.shm_lockstep import ShmLink, ShmUnavailable, host_key, reap_stale_segments

log = logging.getLogger("env_server")

TRANSPORTS = ("auto", "shm", "zmq")  # env.transport (protocols/net/shm_lockstep.py)


class TransportRefused(ValueError):
    """env.transport asks for what this server cannot do (shm with unpackable spaces, say)."""


class ClientBodies(ServerPart):
    name = "client_bodies"

    def __init__(self, server: ServerServices, transport: str, run_id: str, envs: VectorizedParallelEnv,
                 eval_envs: VectorizedParallelEnv | None, global_view_clients: set[bytes]) -> None:
        if transport not in TRANSPORTS:
            raise TransportRefused(f"env.transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.server, self.transport, self.run_id, self.envs = server, transport, run_id, envs
        self.global_view_clients = global_view_clients  # (StateQueries': their observations carry more fields)
        self.most_copies = max(envs.num_copies, eval_envs.num_copies if eval_envs is not None else 0)
        self.host_key = host_key() if transport != "zmq" else ""
        self.segments_made = 0
        if transport == "zmq":
            return
        reap_stale_segments(run_id)
        if transport == "shm":
            # (per agent: a client of one agent is the least any client asks for; one that claims
            # several is refused at its join if their observations together cannot be packed)
            refusal = "there is no /dev/shm on this machine" if not self.host_key else next(
                (r for agent in envs.possible_agents
                 if (r := packing_refusal(envs, [agent], self.most_copies, shared_memory=True))), None)
            if refusal is not None:
                raise TransportRefused(f"env.transport: shm cannot work here: {refusal}; use auto or zmq")

    def check_join(self, request: m.EnvJoin) -> None:
        if self.transport == "shm" and (refusal := self.shm_refusal(request)) is not None:
            raise Refused("shm_unavailable", f"env.transport is shm and this client cannot have it: {refusal}")

    def grant_packed(self, identity: bytes, request: m.EnvJoin, agents: list[str]) -> bool:
        """Whether this client's lockstep bodies travel packed (protocols/codec/packed.py): asked for,
        and nothing but the packed fields travels with its observations. Connections of clients
        that were taken over (a restarted node joined again) lose their layouts here."""
        channel = self.server.channel
        for stale in channel.packed_peers - set(self.server.barrier.clients):
            channel.forget_packed(stale)
        refusal = (
            "not asked for" if not request.packed
            else "the global view travels with its observations" if request.global_view
            else packing_refusal(self.envs, agents, shared_memory=self.shm_refusal(request) is None)
        )
        if refusal is not None:
            channel.forget_packed(identity)
            log.info("client %s: lockstep bodies in msgpack (%s)", request.client_id, refusal)
            return False
        layout = PackedLayout(agents, self.envs.observation_spaces, self.envs.action_spaces, self.envs.possible_agents)
        channel.use_packed(layout, identity)
        log.info("client %s: lockstep bodies packed", request.client_id)
        return True

    def shm_refusal(self, request: m.EnvJoin) -> str | None:
        """Why this join cannot have the shared-memory path (before packing: what packing refuses
        is checked at the server's start), or None."""
        if self.transport == "zmq":
            return "env.transport is zmq"
        if not request.packed:
            return "the client did not ask for packed bodies"
        if request.global_view:
            return "the global view travels with its observations"
        if not request.shm_host:
            return "the client did not offer shared memory"
        if request.shm_host != self.host_key:
            return "the client is on another host"
        possible = self.envs.possible_agents  # the agents it claims (barrier.join refuses bad ones)
        claimed = request.agents + [possible[i] for i in request.agent_indices if 0 <= i < len(possible)] or list(possible)
        return packing_refusal(self.envs, [a for a in claimed if a in possible], self.most_copies, shared_memory=True)

    def grant_shared_memory(self, identity: bytes, request: m.EnvJoin, agents: list[str],
                            packed: bool) -> tuple[dict[str, Any], ShmLink | None]:
        """The welcome's shared-memory fields for this client and its new segment, when it may
        have one (`use_after_welcome` puts it to use once the welcome is sent)."""
        channel = self.server.channel
        channel.forget_shm(identity)  # a client that joins again gets a new segment
        for stale in channel.shm_peers - set(self.server.barrier.clients):
            channel.forget_shm(stale)  # taken over: the dead incarnation's segment goes
        refusal = self.shm_refusal(request) or (None if packed else "its bodies are not packed")
        if refusal is not None:
            if packed:
                log.info("client %s: lockstep over zmq (%s)", request.client_id, refusal)
            return {}, None
        layout = channel.packed_layout(identity)
        capacities = (PackedLayout.largest_observation_bytes(agents, self.envs.observation_spaces, self.most_copies),
                      layout.largest_action_bytes(self.most_copies))
        self.segments_made += 1
        try:
            link = ShmLink.create(self.run_id, self.segments_made, capacities=capacities, peer_sender=request.client_id)
        except ShmUnavailable as error:
            if self.transport == "shm":
                raise Refused("shm_unavailable", str(error)) from None
            log.warning("client %s: lockstep over zmq (%s)", request.client_id, error)
            return {}, None
        log.info("client %s: lockstep through shared memory (%s)", request.client_id, link.name)
        return {"shm_segment": link.name, "shm_capacities": list(capacities)}, link

    def use_after_welcome(self, identity: bytes, link: ShmLink | None) -> None:
        if link is not None:
            # From the message after the welcome on: the client counts the zmq messages it gets
            # from the moment it maps the segment, which is after the welcome (protocols/net/shm_lockstep.py).
            self.server.channel.use_shm(link, identity)

    def on_reset(self, identity: bytes) -> None:
        if (link := self.server.channel.shm_link(identity)) is not None:
            link.unlink()  # the client mapped it before this reset (protocols/net/shm_lockstep.py)

    def deliver(self, client: Client, result: BatchedStep, step: int, missing: list[str], run_finished: bool,
                evaluation: bool) -> bool:
        """A shared-memory client's observation packed straight into its slot, without the
        `EnvObservation` the barrier would build and the channel's layers around it (the
        lockstep's hot path; bench/PROFILE.md round 9 measures the saving); False: the message
        goes the usual way."""
        if client.identity in self.global_view_clients or result.infos or result.positions is not None:  # (none packs)
            return False
        written = self.server.channel.write_packed(client.identity, m.EnvObservation.MSG_TYPE, lambda layout: layout.pack_step_result(
            result, step=step, missing=missing, run_finished=run_finished, evaluation=evaluation))
        if written:
            note_delivery(client, True)
        return written


def note_delivery(client: Client, delivered: bool) -> None:
    """Whether `client` got the latest observation (a send can find no connection)."""
    client.has_current = delivered
    if delivered == client.unreachable:  # log the changes, not every step
        client.unreachable = not delivered
        if client.unreachable:
            log.warning("client %s is unreachable; its observations are dropped until it is back", client.client_id)
        else:
            log.info("client %s is reachable again", client.client_id)
