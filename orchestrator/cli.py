"""`orchestrate`: the command line of Parley.

    orchestrate validate CONFIG [--set K=V ...]              check a config, print a summary
    orchestrate graph    CONFIG [--set K=V ...] [--png PATH]  the topology's edges (and a drawing)
    orchestrate up       CONFIG [--set K=V ...] [--run-dir DIR] [--dry-run]
    orchestrate evaluate RUN_DIR [-n EPISODES]                the run's policies, greedily, from its checkpoints
    orchestrate resume   RUN_DIR                              a stopped run, on from its saved state to its budget
    orchestrate status   RUN_DIR                              per-node summary of a run
    orchestrate logs     RUN_DIR NODE [-n LINES] [--follow]   a node's log
    orchestrate down     RUN_DIR [--wait S]                   stop a running run (SIGTERM)
    orchestrate sweep    SWEEP.yaml|CONFIG [--grid K=V1,V2 ...] [--seeds 0-4] [--set K=V ...] [--parallel N]
                         [--only POINTS] [--sweep-dir DIR] [--dry-run]   a grid of overrides x seeds, one run each
    orchestrate sweep    --merge SWEEP SWEEP ... --sweep-dir OUT   one index over sweeps run apart: their
                                                              directories, or saved records of their runs
    orchestrate report   RUN_DIR|SWEEP_DIR [--json] [--save] [--against POINT]  tables of a run's or a sweep's results

RUN_DIR is a run directory, or `runs/<name>` for the latest run of that name.

Exit codes: 0 success, 1 runtime failure, 2 config or usage error. Also runs as
`python -m orchestrator`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from orchestrator import honour_sigint
from orchestrator.backends import BackendUnavailable
from agent_node.registry import run_descriptions
from orchestrator.config import RESOLVED_FILENAME, RunConfig, load_config, load_resolved
from protocols.run.config_errors import ConfigError
from protocols.storage.jsonlines import latest_values
from orchestrator.faults import fired_positions, plan_faults, refused_faults, unresumable_faults
from orchestrator.launcher import NODE_PID_FILENAME, ZYGOTE_PID_FILENAME, live_pid_from_file
from orchestrator.plan import LaunchPlan, build_plan, format_plan
from orchestrator.api import orchestrator_pid, process_alive, run_prepared
from orchestrator.prelaunch import check_bind_host_before_launch, check_env_before_launch
from orchestrator.rundir import (
    RunDirWriteError,
    EVENTS_FILENAME,
    NODE_LOG_FILENAME,
    NODE_METRICS_FILENAME,
    NODES_DIRNAME,
    PID_FILENAME,
    RunDirError,
    find_run_dir,
    prepare_run,
    read_jsonl,
    remove_temp_socket_dir,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Columns of `orchestrate status`, read from each node's metrics.jsonl.
STATUS_METRICS = ("step", "env/episode", "env/episode_return")


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------
# validate, graph
# ------------------------------------------------------------------------------------------


def describe(config: RunConfig) -> str:
    """One line: what the run is."""
    topology = config.build_topology()
    world_model = config.agents.world_model.kind if config.agents.world_model is not None else "none"
    # what each capability says of itself (agent_node/registry.py)
    capabilities = [said for description in run_descriptions(config) if (said := description.summary(config))]
    return (
        f"{config.run.name}, {config.agents.count} agents, topology {config.topology.kind} "
        f"({len(topology.edges)} edges), env {config.env.name} x{config.env.num_copies}, "
        f"learner {config.agents.learner.kind}, world model {world_model}, "
        + "".join(f"{said}, " for said in capabilities)
        + f"transport {config.network.transport}, {config.run.steps} steps"
        + (f", {_clocks(config.env)}" if config.env.realtime_anywhere else "")
    )


def _clocks(env) -> str:
    """The realtime clock of a run's summary: `realtime clock at 20 steps/s` (with the other
    clock where training and evaluation differ)."""
    rate = f"at {env.steps_per_s:g} steps/s"
    if env.clock == env.evaluation_clock:
        return f"realtime clock {rate} (late actions: {env.late_action})"
    return f"training {env.clock}, evaluation {env.evaluation_clock} {rate} (late actions: {env.late_action})"


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator import api

    config = api.load(args.config, args.overrides)
    api.check(config, args.config)
    print(f"ok: {describe(config)}")
    return EXIT_OK


def topology_positions(config: RunConfig) -> dict[int, tuple[float, float]]:
    """Where `graph --png` draws each agent: a grid and a torus as their lattice (row-major, as
    protocols/engines/topology.py numbers them), a ring, a line's stretch and a full graph on a circle,
    a star around its centre, anything else (exponential, random regular, edges) by networkx's
    force-directed layout, seeded so the picture is the same every time."""
    import networkx as nx

    topology = config.build_topology()
    n = topology.num_nodes
    kind = config.topology.kind
    if kind in ("grid", "torus"):
        cols = config.topology.cols
        # Row 0 on top; a torus's wrap-around edges are drawn as long chords across the lattice.
        return {i: (float(i % cols), -float(i // cols)) for i in range(n)}
    if kind == "line":
        return {i: (float(i), 0.0) for i in range(n)}
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(topology.edges)
    if kind in ("ring", "full") or n <= 2:
        # networkx's circle starts at angle 0; start at the top and go clockwise, as a clock.
        return {i: (math.cos(math.pi / 2 - 2 * math.pi * i / n), math.sin(math.pi / 2 - 2 * math.pi * i / n)) for i in range(n)}
    if kind == "star":
        centre = config.topology.center or 0
        layout = nx.shell_layout(graph, nlist=[[centre], [i for i in range(n) if i != centre]])
    else:
        layout = nx.kamada_kawai_layout(graph) if n <= 64 else nx.spring_layout(graph, seed=0)
    return {i: (float(x), float(y)) for i, (x, y) in layout.items()}


def draw_topology_png(config: RunConfig, path: Path) -> None:
    """Draw the agents' graph into a PNG, laid out by `topology_positions`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topology = config.build_topology()
    n = topology.num_nodes
    positions = topology_positions(config)
    xs = [positions[i][0] for i in range(n)]
    ys = [positions[i][1] for i in range(n)]
    width = max(xs) - min(xs) or 1.0
    height = max(ys) - min(ys) or 1.0
    scale = 4 + 0.08 * n
    figure, axes = plt.subplots(figsize=(scale * max(1.0, width / height) ** 0.5, scale * max(1.0, height / width) ** 0.5))
    for i, j in sorted(topology.edges):
        axes.plot([xs[i], xs[j]], [ys[i], ys[j]], color="0.55", linewidth=1.2, zorder=1)
    axes.scatter(xs, ys, s=900 if n <= 32 else 300, color="#4c72b0", edgecolors="white", zorder=2)
    for i, node in enumerate(topology.nodes):
        axes.annotate(node.removeprefix("agent_"), (xs[i], ys[i]), ha="center", va="center", color="white", fontsize=9 if n <= 32 else 6, zorder=3)
    axes.set_title(f"{config.run.name}: {config.topology.kind}, {n} agents, {len(topology.edges)} edges")
    axes.set_aspect("equal")
    axes.margins(0.12)
    axes.axis("off")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def cmd_graph(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    for a, b in config.build_topology().edge_list():
        print(f"{a} -- {b}")
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail("graph --png needs matplotlib, which is not installed (pip install matplotlib)", EXIT_FAILURE)
        draw_topology_png(config, Path(args.png))
        print(f"wrote {args.png}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# up
# ------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from orchestrator import api

    config = api.load(args.config, args.overrides)
    refused = refused_faults(config)
    if refused and not args.dry_run:
        # Running them would silently skip those faults, which would make the experiment a lie.
        raise ConfigError(refused + ["(remove those events, or use --dry-run to see the plan)"], args.config)
    api.check(config, args.config)
    # Everything the run writes (run dir, events, logs, metrics, keys, checkpoints), here and in
    # the nodes, which inherit the umask, is readable by this user only.
    os.umask(0o077)
    try:
        resolved, run_dir = api.prepare(config, args.run_dir)
    except RunDirError as error:
        return _fail(str(error), EXIT_USAGE)
    except RunDirWriteError as error:
        return _fail(str(error), EXIT_FAILURE)
    plan = build_plan(resolved, run_dir)

    if args.dry_run:
        print(format_plan(plan))
        print(f"launcher   {resolved.launch.start_method}")
        for fault in plan_faults(resolved):
            print(f"fault      {fault.describe()}")
        if plan.socket_dir_is_temp:
            remove_temp_socket_dir(resolved.runtime)
            print(f"\n(dry run: removed the temporary socket dir {plan.socket_dir})")
        print(f"\ndry run: nothing launched; {plan.resolved_path} written")
        return EXIT_OK

    return run_prepared(plan, resolved, run_dir)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from orchestrator import evaluate

    run_dir = find_run_dir(args.run_dir)
    if args.render is not None and Path(args.render).suffix.lower() != ".gif":
        return _fail(f"--render: expected a path ending in .gif, got {args.render!r}", EXIT_USAGE)
    config = evaluate.evaluation_config(evaluate.load_run(run_dir), run_dir, args.episodes, render=args.render is not None)
    source = f"the evaluation of {run_dir}"
    check_bind_host_before_launch(config, source)
    check_env_before_launch(config, source)  # a checkpoint for every agent, among the rest
    os.umask(0o077)
    try:
        resolved, evaluation_dir = prepare_run(config, evaluate.next_evaluation_dir(run_dir))
    except RunDirError as error:
        return _fail(str(error), EXIT_USAGE)
    except RunDirWriteError as error:
        return _fail(str(error), EXIT_FAILURE)
    code = run_prepared(build_plan(resolved, evaluation_dir), resolved, evaluation_dir)
    episodes = evaluate.read_episode_returns(evaluation_dir)
    if not episodes:
        return _fail(f"the evaluation run {evaluation_dir} ended (exit {code}) without finishing its episodes; "
                     f"`orchestrate status {evaluation_dir}` says why", code or EXIT_FAILURE)
    print(evaluate.summary(run_dir, evaluation_dir, episodes, evaluate.random_baseline(resolved, args.episodes)))
    if args.render is not None:
        frames = evaluate.write_gif(evaluation_dir, Path(args.render))
        print(f"rendered the first episode ({frames} frames) to {args.render}")
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    """Launch a stopped (Ctrl-C, `down`, a crash, a killed machine) run again in its directory,
    from what its nodes saved: the env server's resume point (env_server/resume.py) and each
    learner's checkpoint and replay (agent_node/persistence.py), on to the run's budget."""
    from env_server.resume import RESUME_FILENAME
    from orchestrator.rundir import reopen_run

    run_dir = find_run_dir(args.run_dir)
    pid = orchestrator_pid(run_dir)
    if pid is not None and process_alive(pid) or live_run_processes(run_dir):
        return _fail(f"{run_dir} is still running; stop it first (`orchestrate down {run_dir}`)", EXIT_USAGE)
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    finished = [record for record in events if record.get("event") == "run_finished"]
    if finished and finished[-1].get("exit_code") == 0:
        return _fail(f"{run_dir} finished its budget (exit 0): there is nothing to resume", EXIT_USAGE)
    if not (run_dir / NODES_DIRNAME / "env" / RESUME_FILENAME).exists():
        return _fail(f"{run_dir} has no resume point (nodes/env/{RESUME_FILENAME}): it never stepped; "
                     "start it again with `orchestrate up`", EXIT_USAGE)
    resolved = reopen_run(run_dir)
    # The faults already fired are not fired again (their events say which); the rest fire at
    # their steps, which go on from the resume point. A time cannot be resumed: a resumed run's
    # clock starts at 0 again, so an at_s fault not yet fired would hit at another moment.
    if problems := unresumable_faults(plan_faults(resolved), fired_positions(events)):
        return _fail(f"{run_dir} cannot be resumed faithfully: " + "; ".join(problems), EXIT_USAGE)
    check_bind_host_before_launch(resolved, str(run_dir / "resolved.yaml"))
    os.umask(0o077)
    print(f"resuming {run_dir}", file=sys.stderr)
    return run_prepared(build_plan(resolved, run_dir), resolved, run_dir)


# ------------------------------------------------------------------------------------------
# status, logs, down
# ------------------------------------------------------------------------------------------


def live_run_processes(run_dir: Path) -> dict[str, int]:
    """The run's node processes (and its zygote) that still run, from their pid files.

    A pid file holds the pid and the process's start time, so a recycled pid never counts.
    """
    found = {}
    nodes_dir = run_dir / NODES_DIRNAME
    if nodes_dir.is_dir():
        for node_dir in sorted(nodes_dir.iterdir()):
            pid = live_pid_from_file(node_dir / NODE_PID_FILENAME)
            if pid is not None:
                found[node_dir.name] = pid
    zygote = live_pid_from_file(run_dir / ZYGOTE_PID_FILENAME)
    if zygote is not None:
        found["zygote"] = zygote
    return found


def _run_state(run_dir: Path, events: list[dict[str, Any]]) -> str:
    pid = orchestrator_pid(run_dir)
    if pid is None:
        return "never launched (no orchestrator.pid; a dry run?)"
    if process_alive(pid):
        return f"running (orchestrator pid {pid})"
    orphans = live_run_processes(run_dir)
    if orphans:
        listed = ", ".join(f"{name} (pid {p})" for name, p in orphans.items())
        return f"orchestrator pid {pid} is gone, but these still run: {listed}; stop them with `orchestrate down`"
    finished = [record for record in events if record.get("event") == "run_finished"]
    if not finished:
        return f"ended without a run_finished event (orchestrator pid {pid} is gone: killed?)"
    last = finished[-1]
    reason = f": {last['reason']}" if last.get("reason") else ""
    return f"ended, exit {last.get('exit_code', '?')}{reason}"


def _format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # Counters arrive as floats (metrics.jsonl): episode 1600.0 reads "1600", not "1.6e+03".
        if value.is_integer():
            return str(int(value))
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.run_dir)
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    try:
        node_ids = list(load_resolved(run_dir / RESOLVED_FILENAME).node_ids())
    except ConfigError:
        node_ids = sorted(path.name for path in (run_dir / NODES_DIRNAME).iterdir() if path.is_dir())
    print(f"run      {run_dir}")
    print(f"state    {_run_state(run_dir, events)}")
    start = events[0]["t"] if events and isinstance(events[0].get("t"), (int, float)) else None

    def when(record: dict[str, Any]) -> str:
        t = record.get("t")
        return f"+{t - start:.1f}s" if start is not None and isinstance(t, (int, float)) else "?"

    run_events = [record for record in events if record.get("node") is None]
    print(f"events   {len(events)}" + (f"; last run event: {run_events[-1].get('event')} at {when(run_events[-1])}" if run_events else ""))
    header = f"{'node':<10} {'last event':<22} {'at':>8} {'exit':>5} {'step':>8} {'episode':>8} {'return':>10}"
    print()
    print(header)
    for node in node_ids:
        mine = [record for record in events if record.get("node") == node]
        last = mine[-1] if mine else {}
        exit_codes = [record[key] for record in mine for key in ("code", "returncode", "exit_code") if key in record]
        metrics = latest_values(run_dir / NODES_DIRNAME / node / NODE_METRICS_FILENAME, STATUS_METRICS)
        print(
            f"{node:<10} {str(last.get('event', '-')):<22} {when(last) if last else '-':>8} "
            f"{_format_number(exit_codes[-1] if exit_codes else None):>5} "
            f"{_format_number(metrics.get('step')):>8} {_format_number(metrics.get('env/episode')):>8} "
            f"{_format_number(metrics.get('env/episode_return')):>10}"
        )
    return EXIT_OK


def _tail(path: Path, lines: int) -> tuple[str, int]:
    """The last `lines` lines of a file (all of it for lines <= 0) and the file size."""
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if lines > 0:
        text = "".join(text.splitlines(keepends=True)[-lines:])
    return text, len(data)


def cmd_logs(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.run_dir)
    nodes_dir = run_dir / NODES_DIRNAME
    known = sorted(path.name for path in nodes_dir.iterdir() if path.is_dir()) if nodes_dir.is_dir() else []
    if args.node not in known:
        return _fail(f"logs: no node {args.node!r} in {run_dir}; nodes: {', '.join(known) or 'none'}", EXIT_USAGE)
    path = nodes_dir / args.node / NODE_LOG_FILENAME
    if not path.exists() and not args.follow:
        return _fail(f"logs: {path} does not exist (the node has not started yet?)", EXIT_FAILURE)
    offset = 0
    if path.exists():
        text, offset = _tail(path, args.lines)
        sys.stdout.write(text)
        sys.stdout.flush()
    if not args.follow:
        return EXIT_OK
    # Like `tail -f`, but stop once the run's orchestrator is gone and the file stopped growing,
    # so a script that follows a log does not hang after the run.
    pid = orchestrator_pid(run_dir)
    try:
        while True:
            size = path.stat().st_size if path.exists() else 0
            if size < offset:  # truncated or replaced: start over
                offset = 0
            if size > offset:
                with open(path, "rb") as file:
                    file.seek(offset)
                    chunk = file.read()
                offset += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            elif pid is None or not process_alive(pid):
                return EXIT_OK
            time.sleep(0.5)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.run_dir)
    pid = orchestrator_pid(run_dir)
    if pid is None:
        print(f"{run_dir}: no {PID_FILENAME}, the run was never launched (a dry run?); nothing to stop")
        return EXIT_OK
    if not process_alive(pid):
        return _stop_orphans(run_dir, pid, args.wait)
    os.kill(pid, signal.SIGTERM)
    print(f"{run_dir}: sent SIGTERM to the orchestrator (pid {pid})")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if not process_alive(pid):
            print("the run has stopped")
            return EXIT_OK
        time.sleep(0.2)
    if args.wait > 0:
        return _fail(f"the orchestrator (pid {pid}) is still running after {args.wait:g} s", EXIT_FAILURE)
    return EXIT_OK


ORPHAN_TERM_GRACE_S = 10.0


def _stop_orphans(run_dir: Path, orchestrator: int, wait_s: float) -> int:
    """The orchestrator is dead: stop what it left running, from the pid files (SIGTERM, then
    SIGKILL after the grace period: `--wait`, or 10 s)."""
    orphans = live_run_processes(run_dir)
    if not orphans:
        print(f"{run_dir}: the run already ended (orchestrator pid {orchestrator} is gone, no node left running)")
        return EXIT_OK
    print(f"{run_dir}: the orchestrator (pid {orchestrator}) is gone; stopping what it left running: "
          + ", ".join(f"{name} (pid {pid})" for name, pid in orphans.items()))  # fmt: skip
    for pid in orphans.values():
        _signal_group_or_process(pid, signal.SIGTERM)
    grace_s = wait_s if wait_s > 0 else ORPHAN_TERM_GRACE_S
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and live_run_processes(run_dir):
        time.sleep(0.2)
    survivors = live_run_processes(run_dir)
    for name, pid in survivors.items():
        print(f"{name} (pid {pid}) still runs {grace_s:g} s after SIGTERM: SIGKILL")
        _signal_group_or_process(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and live_run_processes(run_dir):
        time.sleep(0.1)
    left = live_run_processes(run_dir)
    if left:
        return _fail(f"still running after SIGKILL: {left}", EXIT_FAILURE)
    print("the run has stopped")
    return EXIT_OK


def _signal_group_or_process(pid: int, signum: int) -> None:
    """Nodes lead their own process group; signal the group, or the process if it leads none."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------
# sweep, report
# ------------------------------------------------------------------------------------------


def _merge_sweeps(args: argparse.Namespace) -> int:
    from orchestrator import sweep

    given = {"a sweep file": args.sweep_file, "--grid": args.grid, "--seeds": args.seeds, "--only": args.only,
             "--set": args.overrides, "--parallel": args.parallel, "--dry-run": args.dry_run}
    other = [flag for flag, value in given.items() if value]
    if other:
        return _fail(f"--merge runs nothing: it takes only sweep directories or records and --sweep-dir, got {', '.join(other)}", EXIT_USAGE)
    if not args.sweep_dir:
        return _fail("--merge: expected --sweep-dir OUT, a new or empty directory for the merged index", EXIT_USAGE)
    out_dir = Path(args.sweep_dir).absolute()
    index = sweep.merge_sweeps([Path(source) for source in args.merge], out_dir)
    for source in index["merged_from"]:
        print(f"  {source['dir']}: seeds {source['seeds']} ({source['state']}), commits {', '.join(c[:7] for c in source['commits']) or '-'}")
    print(f"sweep {index['sweep']}: {len(index['runs'])} run(s), seeds {index['seeds']}, merged into "
          f"{out_dir / sweep.SWEEP_INDEX_FILENAME}; `orchestrate report {out_dir}` for the results")  # fmt: skip
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator import sweep

    if args.merge:
        return _merge_sweeps(args)
    if args.sweep_file is None:
        return _fail("sweep: expected a sweep file or a run config (or --merge DIR DIR ... --sweep-dir OUT)", EXIT_USAGE)
    if args.parallel is not None and args.parallel < 1:
        return _fail(f"--parallel: expected >= 1, got {args.parallel}", EXIT_USAGE)
    seeds = sweep.parse_seeds(args.seeds) if args.seeds is not None else None
    spec, base = sweep.load_sweep(args.sweep_file, seeds=seeds, extra_set=args.overrides, grid=args.grid)
    sweep_dir = (Path(args.sweep_dir) if args.sweep_dir else sweep.default_sweep_dir(spec)).absolute()
    runs = sweep.expand(spec, sweep_dir)
    if args.only:
        runs = sweep.only_points(runs, args.only.split(","))
    # Every point's config is checked before anything is launched (or any directory made).
    sweep.validate_runs(base, runs, check_env=not args.dry_run, source=f"{args.sweep_file} (base {base})")
    parallel = args.parallel if args.parallel is not None else spec.parallel
    points = sorted({run.point for run in runs})
    print(f"sweep {spec.name}: {len(points)} point(s) x {len(spec.seeds)} seed(s) = {len(runs)} run(s) "
          f"of {base}, {parallel} at a time, into {sweep_dir}")  # fmt: skip
    if args.dry_run:
        for run in runs:
            print(f"  {run.name}: " + " ".join(f"--set {text}" for text in run.overrides))
        print("dry run: every point's config is valid; nothing launched")
        return EXIT_OK
    sweep.claim_sweep_dir(sweep_dir)
    code = sweep.SweepRunner(spec, base, runs, sweep_dir, parallel).run()
    failed = [run for run in runs if run.status == "failed"]
    for run in failed:
        reason = [line for line in run.error_tail if not line.startswith("run directory:")][-1:] or ["(no output)"]
        print(f"failed: {run.name} (exit {run.exit_code}): {reason[0]}", file=sys.stderr)
    print(f"sweep index: {sweep_dir / sweep.SWEEP_INDEX_FILENAME}; `orchestrate report {sweep_dir}` for the results",
          file=sys.stderr)  # fmt: skip
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator import report

    return report.main(Path(args.path), as_json=args.json, save=args.save, against=args.against)


# ------------------------------------------------------------------------------------------
# Parser and entry point
# ------------------------------------------------------------------------------------------


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parley")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "not installed"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrate",
        description="Run decentralized multi-agent RL: one YAML config, one process per agent.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrate (parley {_installed_version()})")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add_config_arguments(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("config", help="the run's YAML config")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value, e.g. --set run.steps=100 (VALUE is YAML); repeatable",
        )  # fmt: skip

    validate = verbs.add_parser("validate", help="check a config and print a summary")
    add_config_arguments(validate)
    validate.set_defaults(handler=cmd_validate)

    graph = verbs.add_parser("graph", help="print the topology's edges, optionally draw it")
    add_config_arguments(graph)
    graph.add_argument("--png", metavar="PATH", help="also draw the graph into this PNG (needs matplotlib)")
    graph.set_defaults(handler=cmd_graph)

    up = verbs.add_parser("up", help="create a run directory and launch the run")
    add_config_arguments(up)
    up.add_argument("--run-dir", metavar="DIR", help="use this (new or empty) directory instead of runs/<name>/<timestamp>")
    up.add_argument("--dry-run", action="store_true", help="write resolved.yaml, print the launch plan, launch nothing")
    up.set_defaults(handler=cmd_up)

    evaluate = verbs.add_parser(
        "evaluate", help="run a finished run's policies greedily from its last checkpoints; print the returns per agent"
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or runs/<name> for its latest run")
    evaluate.add_argument("--episodes", "-n", type=int, default=10, metavar="N", help="evaluation episodes (default 10)")
    evaluate.add_argument("--render", metavar="OUT.gif", help="also draw the first episode (the env's rgb_array render) into this GIF")
    evaluate.set_defaults(handler=cmd_evaluate)

    resume = verbs.add_parser(
        "resume", help="launch a stopped or killed run again in its directory, from its saved state, to its budget"
    )
    resume.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or runs/<name> for its latest run")
    resume.set_defaults(handler=cmd_resume)

    status = verbs.add_parser("status", help="summarise a run: per-node last event, exit code, metrics")
    status.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or runs/<name> for its latest run")
    status.set_defaults(handler=cmd_status)

    logs = verbs.add_parser("logs", help="print a node's log")
    logs.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or runs/<name> for its latest run")
    logs.add_argument("node", metavar="NODE", help="node id: env, agent_0, ...")
    logs.add_argument("-n", "--lines", type=int, default=50, metavar="LINES", help="last LINES lines (0: all; default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    logs.set_defaults(handler=cmd_logs)

    down = verbs.add_parser(
        "down", help="stop a running run (SIGTERM to its orchestrator; if it is dead, to the nodes it left)"
    )
    down.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or runs/<name> for its latest run")
    down.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for it to stop")
    down.set_defaults(handler=cmd_down)

    sweep = verbs.add_parser("sweep", help="run a grid of config overrides x seeds, one run each, with an index")
    sweep.add_argument("sweep_file", metavar="SWEEP.yaml|CONFIG.yaml", nargs="?",
                       help="a sweep file (base config, grid, seeds: see configs/sweeps/), or a run config with --grid")  # fmt: skip
    sweep.add_argument("--merge", nargs="+", metavar="SWEEP",
                       help="merge sweeps of one spec run apart (other seeds, other points, another machine) into "
                            "--sweep-dir: sweep directories, or saved sweep records (report/sweep_record.json, a "
                            "results record holding one) whose run directories are gone; runs nothing")  # fmt: skip
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a swept key and its values (each YAML), added to the file's grid; repeatable")  # fmt: skip
    sweep.add_argument("--sweep-dir", metavar="DIR", help="a new or empty directory (default runs/sweeps/<name>-<timestamp>)")
    sweep.add_argument("--parallel", "-j", type=int, metavar="N", help="runs at once (default: the file's, else 1)")
    sweep.add_argument("--seeds", metavar="SEEDS", help="replace the file's seeds: a range 0-4 or a list 0,3,7")
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a fixed override for every point, after the file's `set:` (VALUE is YAML); repeatable",
    )  # fmt: skip
    sweep.add_argument("--only", metavar="POINTS",
                       help="run only these points (names as the dry run lists them, with or without the pNN- prefix, or the pNN alone; comma-separated)")  # fmt: skip
    sweep.add_argument("--dry-run", action="store_true", help="validate every point and list the runs; launch nothing")
    sweep.set_defaults(handler=cmd_sweep)

    report = verbs.add_parser("report", help="tables of a run's results, or one row per point of a sweep")
    report.add_argument("path", metavar="RUN_DIR|SWEEP_DIR", help="a run directory, runs/<name> (its latest run), or a sweep directory")
    report.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    report.add_argument("--save", "--plot", dest="save", action="store_true",
                        help="also write <dir>/report/summary.md and PNG plots (plots need matplotlib)")  # fmt: skip
    report.add_argument("--against", metavar="POINT",
                        help="a sweep: compare its points with this one (its name or pNN), not with its first")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    honour_sigint()  # (the `orchestrate` script comes here first; `python -m orchestrator` did it already)
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`orchestrate status RUN | head -1`): what it wanted is printed.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as error:
        return _fail(str(error), EXIT_USAGE)
    except RunDirError as error:
        return _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        # Ctrl-C before the runtime took over its signals (while the config or the env is being
        # checked): nothing was launched, so there is nothing to reap.
        return _fail("interrupted before launch", EXIT_INTERRUPTED)
