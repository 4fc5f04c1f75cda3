"""The client side of the env protocol, sans-IO: join, welcome, reset, observation, action.

Both the agent node (one env agent over K copies, autoreset, lockstep with other clients) and
`RemoteParallelEnv` (every agent of one copy, no autoreset) talk to the env server the same
way; this class is the bookkeeping they share. It builds the requests, checks each answer
against what was asked (a refusal becomes `EnvRefused` naming the server's code and message;
an answer of the wrong type or for agents this client does not drive is an error), decodes the
spaces of the welcome, and remembers when the server was last heard from, for the silence
watchdog. The caller sends and receives: it never touches a socket or a clock.

    client = EnvClient("agent_3", agent_indices=[3])
    send(client.join())
    client.on_welcome(receive())           # client.agents, client.num_copies, spaces ...
    send(client.reset(seed=None))
    observation = client.on_message(receive(), now)
    send(client.answer(observation, {client.agents[0]: actions}))

**An env-server restart** (the orchestrator restarts it and says so: `control.env_restarting`,
then `control.env_back`). `server_restarting()` forgets the server: its silence is not counted
(the orchestrator watches the restart; a server that does not come back ends the run from
there) and nothing is answered until the new server's welcome (`answer` refuses). The caller
drops its connection (messages queued for the dead server must not reach the new one), then
connects again and sends `rejoin()`; the new server's welcome must grant the same agents,
copies and spaces as the first one, else `EnvProtocolError` says what changed.

**Packed bodies** (protocols/codec/packed.py): a client made with `packed=True` asks for them at join;
when the welcome grants them, `packed_layout` is the layout both sides use, and the caller hands
it to its channel (`Channel.use_packed`) before it sends the reset. Messages stay the same
`EnvObservation` / `EnvAction` objects on both sides of the channel.

**Shared memory** (protocols/net/shm_lockstep.py): with packed bodies the client also offers its
machine's `host_key()`; a server on the same host may then grant a segment for the lockstep's
bodies (`EnvWelcome.shm_segment`, with its two wake-up pipes). `use_lockstep_transport(channel,
client)` is the one step that touches anything outside this class: after each welcome it hands
the channel the packing layout and the granted segment.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import gymnasium as gym

from protocols.codec import messages as m
from protocols.codec.packed import PackedLayout
from protocols.net.shm_lockstep import ShmLink, ShmUnavailable, host_key
from protocols.codec.spaces import decode_space


class EnvRefused(RuntimeError):
    """The env server answered a request with an error reply."""


class EnvProtocolError(RuntimeError):
    """The env server (or the caller) broke the protocol: an unexpected message or agent."""


class EnvClient:
    def __init__(
        self,
        client_id: str,
        *,
        agents: list[str] | None = None,
        agent_indices: list[int] | None = None,
        global_view: bool = False,
        packed: bool = False,
        shm: bool = True,
    ) -> None:
        self.client_id = client_id
        self.global_view = global_view  # ask for the global state and joint action (env_server/global_view.py)
        self.packed = packed  # ask for packed lockstep bodies (protocols/codec/packed.py)
        self.packed_layout: PackedLayout | None = None  # granted by the welcome
        # Offer shared memory with packed bodies (protocols/net/shm_lockstep.py); the env server decides.
        self.shm = shm
        self._requested_agents = list(agents or [])
        self._requested_indices = list(agent_indices or [])
        self.welcome: m.EnvWelcome | None = None
        self.agents: list[str] = []
        self.observation_spaces: dict[str, gym.Space] = {}
        self.action_spaces: dict[str, gym.Space] = {}
        self.last_heard_at: float | None = None
        self.messages_received = 0
        self.restarting = False  # between server_restarting() and the new server's welcome
        self.waiting_for_server = False  # between server_restarting() and rejoin(): no silence deadline
        self.rejoins = 0
        # The newest training step the server has sent, and the newest step of the evaluation
        # under way (each evaluation counts from 0): an older observation still unanswered was
        # stepped past (a realtime clock, or a step deadline), and is not answered.
        self.newest_training_step = -1
        self.newest_evaluation_step = -1

    # ------------------------------------------------------------------ requests

    def join(self) -> m.EnvJoin:
        return m.EnvJoin(
            client_id=self.client_id,
            agents=self._requested_agents,
            agent_indices=self._requested_indices,
            global_view=self.global_view,
            packed=self.packed,
            shm_host=host_key() if self.packed and self.shm else "",
        )

    def reset(self, seed: int | None = None) -> m.EnvReset:
        self._require_welcome("reset")
        return m.EnvReset(seed=seed)

    def answer(self, observation: m.EnvObservation, actions: dict[str, Any]) -> m.EnvAction:
        """The action message answering `observation` (same step, same training/evaluation mode)."""
        self._require_welcome("answer")
        if self.restarting:
            raise EnvProtocolError(f"cannot answer step {observation.step}: the env server is restarting")
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise EnvProtocolError(
                f"actions for agents this client does not drive: {sorted(unknown)}; it drives {self.agents}"
            )
        return m.EnvAction(step=observation.step, actions=actions, evaluation=observation.evaluation)

    # ------------------------------------------------------------------ answers

    def server_restarting(self) -> None:
        """The orchestrator is restarting the env server: see the module docstring."""
        self.restarting = self.waiting_for_server = True
        self.last_heard_at = None  # no silence deadline until rejoin()
        # The new server resumes from its own saved step, maybe an earlier one.
        self.newest_training_step = self.newest_evaluation_step = -1

    def note_newest(self, messages: Iterable[Any]) -> None:
        """Before the server's messages just received are handled: the newest training and
        evaluation steps among them (see `stepped_past`)."""
        for message in messages:
            if not isinstance(message, m.EnvObservation):
                continue
            if message.evaluation:
                self.newest_evaluation_step = max(self.newest_evaluation_step, message.step)
            else:
                self.newest_training_step = max(self.newest_training_step, message.step)
                self.newest_evaluation_step = -1  # training again: the next evaluation counts from 0

    def stepped_past(self, observation: m.EnvObservation) -> bool:
        """Whether a newer observation of the same clock has come since this one: the server has
        stepped on, and only the newest is answered."""
        newest = self.newest_evaluation_step if observation.evaluation else self.newest_training_step
        return observation.step < newest

    def rejoin(self, now: float) -> m.EnvJoin:
        """The join for the restarted server (after `server_restarting`); its silence counts
        again from `now`: a server that never answers is dead after all."""
        if not self.restarting:
            raise EnvProtocolError("rejoin() without server_restarting(): the env server did not restart")
        self._require_welcome("rejoin")
        self.waiting_for_server = False
        self.last_heard_at = now
        return self.join()

    def on_welcome(self, message: Any) -> m.EnvWelcome:
        """Take the server's answer to `join`; refusals raise `EnvRefused`."""
        welcome = self._expect(message, m.EnvWelcome, "the answer to env.join")
        if self.restarting:
            return self._on_rejoin_welcome(welcome)
        if self._requested_indices and len(welcome.agents) != len(self._requested_indices):
            raise EnvProtocolError(
                f"asked for agent indices {self._requested_indices}, the env server granted {welcome.agents}"
            )
        if self._requested_agents and sorted(welcome.agents) != sorted(self._requested_agents):
            raise EnvProtocolError(f"asked for agents {self._requested_agents}, the env server granted {welcome.agents}")
        self.welcome = welcome
        self.agents = list(welcome.agents)
        self.observation_spaces = {a: decode_space(s) for a, s in welcome.observation_spaces.items()}
        self.action_spaces = {a: decode_space(s) for a, s in welcome.action_spaces.items()}
        self._take_packing(welcome)
        return welcome

    def _take_packing(self, welcome: m.EnvWelcome) -> None:
        if welcome.packed and not self.packed:
            raise EnvProtocolError("the env server packs the lockstep's bodies, which this client did not ask for")
        if welcome.shm_segment and not (welcome.packed and self.packed and self.shm):
            raise EnvProtocolError("the env server granted a shared-memory segment, which this client did not ask for")
        self.packed_layout = (
            PackedLayout(self.agents, self.observation_spaces, self.action_spaces, welcome.possible_agents)
            if welcome.packed else None
        )

    def _on_rejoin_welcome(self, welcome: m.EnvWelcome) -> m.EnvWelcome:
        first = self.welcome
        changed = [
            what for what, before, now in (
                ("agents", first.agents, welcome.agents),
                ("num_copies", first.num_copies, welcome.num_copies),
                ("observation_spaces", first.observation_spaces, welcome.observation_spaces),
                ("action_spaces", first.action_spaces, welcome.action_spaces),
                ("autoreset", first.autoreset, welcome.autoreset),
            ) if before != now
        ]
        if changed:
            raise EnvProtocolError(f"the restarted env server changed {changed} (it must serve the run it resumes)")
        self.welcome = welcome  # its step is the one the run resumed at
        self._take_packing(welcome)  # the new server may decide otherwise (another version, forwarded infos)
        self.restarting = False
        self.rejoins += 1
        return welcome

    def on_message(self, message: Any, now: float) -> m.EnvObservation:
        """Take one message from the env server after the welcome: an observation, or a refusal."""
        self._require_welcome("receive observations")
        if self.restarting:
            raise EnvProtocolError("env.observation while the env server restarts (before its welcome)")
        self.heard(now)
        observation = self._expect(message, m.EnvObservation, "an env.observation")
        missing = [agent for agent in self.agents if agent not in observation.observations]
        if missing:
            raise EnvProtocolError(f"env.observation of step {observation.step} lacks this client's agents {missing}")
        return observation

    def heard(self, now: float) -> None:
        """The server is known to be alive (or known to be waiting for us) at `now`; ignored
        while it restarts (it is neither)."""
        if not self.waiting_for_server:
            self.last_heard_at = now

    def silent_for(self, now: float) -> float:
        return 0.0 if self.last_heard_at is None else now - self.last_heard_at

    def silence_deadline(self, timeout_s: float) -> float:
        """When the server will have been silent for `timeout_s` (inf before it was first heard)."""
        return math.inf if self.last_heard_at is None else self.last_heard_at + timeout_s

    @property
    def num_copies(self) -> int:
        self._require_welcome("know the number of copies")
        return self.welcome.num_copies

    # ------------------------------------------------------------------ helpers

    def _expect(self, message: Any, expected: type, what: str) -> Any:
        self.messages_received += 1
        if isinstance(message, m.ErrorReply):
            raise EnvRefused(f"env server refused: {message.code}: {message.message}")
        if not isinstance(message, expected):
            raise EnvProtocolError(f"expected {what} ({expected.MSG_TYPE}), got {type(message).__name__}")
        return message

    def _require_welcome(self, action: str) -> None:
        if self.welcome is None:
            raise EnvProtocolError(f"cannot {action} before the env server's welcome (call join, then on_welcome)")


def use_lockstep_transport(channel: Any, client: EnvClient, server: str = "env") -> str:
    """Apply the latest welcome's grants to the env channel: the packed layout, and the shared-
    memory segment mapped and its wake-up pipes opened (their names unlinked at once). Returns how
    the lockstep's bodies travel: "shm", "zmq packed" or "zmq msgpack". Call it before sending
    env.reset: the channel counts its zmq messages to the server from then on."""
    welcome = client.welcome
    if client.packed_layout is None:
        channel.forget_shm()
        channel.forget_packed()
        return "zmq msgpack"
    channel.use_packed(client.packed_layout)
    if not welcome.shm_segment:
        channel.forget_shm()
        return "zmq packed"
    if len(welcome.shm_capacities) != 2:
        raise EnvProtocolError(f"env.welcome: shm_capacities should be [down, up] bytes, got {welcome.shm_capacities}")
    try:
        link = ShmLink.attach(welcome.shm_segment, capacities=tuple(welcome.shm_capacities), peer_sender=server)
    except (ShmUnavailable, ValueError, TypeError) as error:
        raise EnvProtocolError(f"the env server granted shared memory, which this process cannot use ({error}); "
                               "set env.transport: zmq") from error
    channel.use_shm(link)
    return "shm"
