"""The env's state for the clients that ask, a part of the env server (env_server/part.py).

Two ways: `env.state` asks for every copy's `state()` once, now (`on_message`); a client that
joins with `global_view` gets the global state and the joint action with every observation
(global_view.py computes them; `dress` adds them to its observations, which are then never packed
nor sent through shared memory). The welcome says what is available (`welcome_fields`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from env_server.barrier import Outgoing, Refused
from env_server.evaluator import Evaluator
from env_server.global_view import GlobalView, has_state
from env_server.part import ServerPart, ServerServices
from protocols.codec import messages as m
from protocols.codec.spaces import encode_space
from protocols.codec.wire import Envelope

log = logging.getLogger("env_server")


def state_refusal(envs: Any, eval_envs: Any | None, env_name: str) -> str | None:
    """Why the server cannot answer `env.state` for these copies (training and evaluation), or None."""
    if not hasattr(envs, "copies") or (eval_envs is not None and not hasattr(eval_envs, "copies")):
        return "the env copies run in worker processes (env.num_workers > 1); env.state needs them in the server process"
    if not has_state(envs.copies[0]):
        return f"the env {env_name} has no state() (with a Box state_space)"
    return None


class StateQueries(ServerPart):
    name = "state"
    handles = (m.EnvStateRequest,)

    def __init__(self, server: ServerServices, global_view: GlobalView, envs: Any, evaluator: Evaluator, env_name: str) -> None:
        self.server, self.global_view, self.envs, self.evaluator = server, global_view, envs, evaluator
        self.global_view_clients: set[bytes] = set()  # off until a client asks (centralized training)
        # Why `env.state` cannot be answered, or None (then the welcome tells every client the state space).
        self.state_unavailable = state_refusal(envs, evaluator.eval_envs, env_name)

    def check_join(self, request: m.EnvJoin) -> None:
        if request.global_view and not self.global_view.available:
            raise Refused("global_view_unavailable", self.global_view.unavailable_reason)

    def joined(self, identity: bytes, request: m.EnvJoin) -> dict[str, Any]:
        """The welcome's fields of the state for this client (and its global view, if it asked)."""
        if request.global_view:
            self.global_view_clients.add(identity)
            self.global_view.enable()
        return {
            "global_view": self.global_view.welcome() if request.global_view else None,
            "state_space": None if self.state_unavailable else encode_space(self.envs.copies[0].state_space),
            "state_unavailable": self.state_unavailable or "",
        }

    def dress(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """The observations of global-view clients with the global view's fields."""
        if not self.global_view_clients:
            return outgoing
        return [
            (identity, dataclasses.replace(message, **self.global_view.fields()))
            if identity in self.global_view_clients and isinstance(message, m.EnvObservation) else (identity, message)
            for identity, message in outgoing
        ]

    def on_message(self, identity: bytes, envelope: Envelope) -> None:
        """`env.state`: every copy's `state()`, called now and only for this request (a client
        that needs the state every step joins with the global view instead). An env whose
        `state()` raises gets a `state_failed` error reply naming the exception; the server goes
        on serving (a legal env may have no state at some moments: multiwalker_v9's raises once
        its walkers are gone)."""
        if self.state_unavailable:
            raise Refused("state_unavailable", self.state_unavailable)
        server, evaluating = self.server, self.evaluator.running
        envs = self.evaluator.eval_envs if evaluating else self.envs
        try:
            state = np.stack([np.asarray(copy.state()) for copy in envs.copies])
        except Exception as error:  # noqa: BLE001 - the env's own failure, told to the client that asked
            what = f"{type(error).__name__}: {error}"
            log.info("the env's state() raised %s; answered env.state with state_failed", what)
            server.channel.reply(envelope, m.ErrorReply(code="state_failed", message=f"the env's state() raised {what}"))
            return
        if state.dtype.str not in m.WIRE_DTYPES:
            raise Refused("state_failed", f"the env's state() gave dtype {state.dtype}, which the wire cannot carry "
                                          "(a numeric or boolean array is expected)")
        server.channel.reply(envelope, m.EnvStateReply(step=self.evaluator.schedule.step if evaluating else server.step,
                                                       evaluation=evaluating, state=state))
