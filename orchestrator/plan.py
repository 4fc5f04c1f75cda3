"""The launch plan: exactly which processes a run starts, as pure data.

`build_plan(resolved_config, run_dir)` computes, without touching the disk or starting
anything, one `NodeLaunch` per node — its command line, the environment variables it gets on
top of the orchestrator's, its log file and its seed — plus the control endpoint the
orchestrator binds. A backend (`orchestrator/runtime.py`, local subprocesses for now) only
executes a plan; `orchestrate up --dry-run` prints it with `format_plan`.

Every node is started the same way:

    python -m env_server|agent_node|<a capability's node> --config <run dir>/resolved.yaml --node-id <id> --control <endpoint>

and learns everything else (its seed, its socket directory, its neighbours' addresses) from
`resolved.yaml` and from the orchestrator's rendezvous directory.

With the tcp transport the control endpoint is `tcp://<bind_host>:0` (or `:LOW-HIGH` with
`network.port_range`): the port is only known once the orchestrator has bound it, so the runtime
calls `plan.with_control_endpoint(advertised)` before launching the nodes.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from agent_node.registry import extra_nodes
from orchestrator.config import RESOLVED_FILENAME, RunConfig, derive_nodes
from orchestrator.rundir import EVENTS_FILENAME, NODE_LOG_FILENAME, NODE_METRICS_FILENAME, NODES_DIRNAME, PID_FILENAME
from protocols.run.settings import ORCHESTRATOR_ID, IPC_ENDPOINT_MAX_BYTES, ipc_dir_fits, ipc_endpoint, longest_ipc_endpoint

# The module each role of every run runs as (`python -m <module>`: a name, not an import, as
# the orchestrator imports no learning code); a capability's own nodes name theirs
# (agent_node/registry.py `ExtraNode`).
ROLE_MODULES = {"env_server": "env_server", "agent": "agent_node"}
# The root of the source tree, put on the nodes' PYTHONPATH so `python -m agent_node` works
# whether or not Parley is installed into the interpreter.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class NodeLaunch:
    """One process of the run."""

    node_id: str
    role: str  # "env_server" | "agent" | a capability's node role ("learner", "supervisor")
    index: int  # seed derivation index (agents 0..n-1, env server n)
    seed: int
    argv: tuple[str, ...]
    # Set on top of the orchestrator's own environment (not a complete environment).
    env: Mapping[str, str]
    node_dir: Path
    log_path: Path  # the node's stdout and stderr
    metrics_path: Path


@dataclass(frozen=True)
class LaunchPlan:
    run_id: str
    run_name: str
    run_dir: Path
    resolved_path: Path
    events_path: Path
    pid_path: Path
    transport: str  # "ipc" | "tcp"
    socket_dir: Path | None  # None with tcp
    socket_dir_is_temp: bool  # True: a /tmp/parley-* dir to remove when the run ends
    # What the orchestrator binds its control ROUTER to, and (once final) what nodes connect to.
    control_endpoint: str
    nodes: tuple[NodeLaunch, ...]

    def node(self, node_id: str) -> NodeLaunch:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in the plan (nodes: {', '.join(n.node_id for n in self.nodes)})")

    @property
    def control_endpoint_is_final(self) -> bool:
        """False while the control endpoint still asks for a free port (tcp port 0, or a range)."""
        if not self.control_endpoint.startswith("tcp://"):
            return True
        port = self.control_endpoint.rpartition(":")[2]
        return port != "0" and "-" not in port

    def with_control_endpoint(self, endpoint: str) -> LaunchPlan:
        """The same plan with the control endpoint the orchestrator actually bound (tcp)."""
        nodes = tuple(
            dataclasses.replace(node, argv=_replace_option(node.argv, "--control", endpoint)) for node in self.nodes
        )
        return dataclasses.replace(self, control_endpoint=endpoint, nodes=nodes)


def _replace_option(argv: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    position = argv.index(option)
    return argv[: position + 1] + (value,) + argv[position + 2 :]


def control_bind_address(config: RunConfig) -> str:
    layout = config.runtime
    assert layout is not None
    if config.network.transport == "ipc":
        assert layout.socket_dir is not None
        return ipc_endpoint(layout.socket_dir, ORCHESTRATOR_ID, "control")
    return config.network.tcp_bind_address()


def _node_env(threads: int) -> dict[str, str]:
    # The project root first, then whatever the user had (their own env or plugin modules),
    # every entry of it kept, without repeating the root.
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    pythonpath = os.pathsep.join([str(PROJECT_ROOT)] + [entry for entry in inherited if entry != str(PROJECT_ROOT)])
    return {
        # BLAS/OpenMP pools sized like torch's: many processes share few cores.
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        # Log lines reach the log file as they are written, also when a node is killed.
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": pythonpath,
    }


def build_plan(config: RunConfig, run_dir: str | Path, python: str = sys.executable) -> LaunchPlan:
    """The launch plan of a resolved config (one with `runtime`, see `rundir.prepare_run`)."""
    layout = config.runtime
    if layout is None:
        raise ValueError("build_plan needs a resolved config (config.runtime is None); create it with rundir.prepare_run")
    run_dir = Path(run_dir)
    if run_dir.absolute() != Path(layout.run_dir):
        raise ValueError(f"build_plan: run_dir {run_dir} is not the config's runtime.run_dir {layout.run_dir}")
    if config.network.transport == "ipc":
        assert layout.socket_dir is not None  # RunConfig validation guarantees it
        if not ipc_dir_fits(layout.socket_dir, config.agents.count):
            longest = longest_ipc_endpoint(layout.socket_dir, config.agents.count)
            raise ValueError(
                f"runtime.socket_dir: ipc endpoints must be at most {IPC_ENDPOINT_MAX_BYTES} bytes, "
                f"got {len(longest.encode())} for {longest}"
            )

    resolved_path = run_dir / RESOLVED_FILENAME
    control = control_bind_address(config)
    capability_nodes = {node.node_id: node for node in extra_nodes(config)}
    nodes = []
    for node_id, entry in (config.nodes or derive_nodes(config)).items():
        node_dir = run_dir / NODES_DIRNAME / node_id
        extra = capability_nodes.get(node_id)  # a capability's own node (a learner node, a supervisor)
        module = extra.module if extra else ROLE_MODULES[entry.role]
        threads = extra.torch_threads if extra else (config.agents.torch_threads if entry.role == "agent" else 1)
        argv = (
            python, "-m", module,
            "--config", str(resolved_path),
            "--node-id", node_id,
            "--control", control,
        )  # fmt: skip
        nodes.append(
            NodeLaunch(
                node_id=node_id,
                role=entry.role,
                index=entry.index,
                seed=entry.seed,
                argv=argv,
                env=_node_env(threads),
                node_dir=node_dir,
                log_path=node_dir / NODE_LOG_FILENAME,
                metrics_path=node_dir / NODE_METRICS_FILENAME,
            )
        )
    return LaunchPlan(
        run_id=layout.run_id,
        run_name=config.run.name,
        run_dir=run_dir,
        resolved_path=resolved_path,
        events_path=run_dir / EVENTS_FILENAME,
        pid_path=run_dir / PID_FILENAME,
        transport=config.network.transport,
        socket_dir=None if layout.socket_dir is None else Path(layout.socket_dir),
        socket_dir_is_temp=layout.socket_dir_is_temp,
        control_endpoint=control,
        nodes=tuple(nodes),
    )


def format_plan(plan: LaunchPlan) -> str:
    """A human-readable rendering of the plan (`orchestrate up --dry-run`)."""
    if plan.socket_dir is None:
        sockets = "tcp (nodes bind free ports and advertise them)"
    elif plan.socket_dir_is_temp:
        sockets = f"ipc in {plan.socket_dir} (temporary: the run dir path is too long for unix sockets)"
    else:
        sockets = f"ipc in {plan.socket_dir}"
    lines = [
        f"run        {plan.run_id}",
        f"run dir    {plan.run_dir}",
        f"config     {plan.resolved_path}",
        f"events     {plan.events_path}",
        f"sockets    {sockets}",
        f"control    {plan.control_endpoint}",
        f"nodes      {len(plan.nodes)}",
    ]
    common_env = dict(plan.nodes[0].env) if plan.nodes else {}
    for node in plan.nodes[1:]:
        common_env = {key: value for key, value in common_env.items() if node.env.get(key) == value}
    if common_env:
        lines.append("env        " + " ".join(f"{key}={shlex.quote(value)}" for key, value in common_env.items()))
    for node in plan.nodes:
        lines.append("")
        lines.append(f"[{node.node_id}]  role {node.role}, index {node.index}, seed {node.seed}")
        extra_env = {key: value for key, value in node.env.items() if key not in common_env}
        if extra_env:
            lines.append("  env   " + " ".join(f"{key}={shlex.quote(value)}" for key, value in extra_env.items()))
        lines.append(f"  log   {node.log_path}")
        lines.append(f"  argv  {shlex.join(node.argv)}")
    return "\n".join(lines)
