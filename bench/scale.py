"""How `orchestrate up` scales with the number of agent processes.

For each agent count (default 4, 8, 16, 32) and each start method (`launch.start_method`:
fork_server, spawn), runs a real `orchestrate up` of DQN agents on MPE simple_spread with N =
the agent count, ring topology by default, for a short step budget, and measures:

- ready_s      from `run_started` to `started` (every node registered and ready), in events.jsonl
- steps_per_s  lockstep steps / (run_complete - started)
- rss / pss / private MB per agent: /proc/<pid>/smaps_rollup of every agent, sampled every
               second while the run is running; the last sample in which every agent was alive
               (so after the learner has trained for a while), averaged over agents; max too
- zygote_pss   the fork server's own PSS (its share of the pages the agents share with it)
- exit code    of `orchestrate up`, and the load average before and after (the machine is shared)

- msgs / KB per peer edge: messages and kilobytes one agent sent one neighbour over the run,
               mean over the directed agent -> agent edges, from the last `link/<a>_to_<b>/sent`
               and `/bytes` counters in the agents' metrics.jsonl (membership heartbeats and
               consensus; the env link is given per step: messages and bytes an agent sent the
               env server per lockstep step, mean over agents)

    python bench/scale.py                              # table
    python bench/scale.py --agents 4,32 --json         # JSON
    python bench/scale.py --methods fork_server --steps 300 --topology exponential
    python bench/scale.py --default-job                # the default job's memory, process by process

`--default-job` runs configs/4agents_ring.yaml as shipped (ensemble world model, consensus,
landmark assignment, its replay and its full step budget unless `--steps` is given) and prints
the RSS and PSS of every process: the env server, each agent, the fork server, from the last
sample in which all of them were alive, and each agent's peak PSS over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "4agents_ring.yaml"


def smaps_rollup_mb(pid: int) -> dict[str, float] | None:
    """RSS, PSS and private (clean + dirty) memory of a process in MB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0].rstrip(":")] = int(parts[1]) / 1024  # kB → MB
    if "Rss" not in fields:
        return None
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "private": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0),
    }


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return events


def default_job_config(steps: int | None, directory: Path) -> Path:
    """configs/4agents_ring.yaml as shipped: only the run's name, optionally its budget, and no live view."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["run"]["name"] = "scale_default_job"
    if steps is not None:
        config["run"]["steps"] = steps
    config["launch"] = {**config.get("launch", {}), "live_view": "off"}
    path = directory / "default_job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_config(agents: int, steps: int, topology: str, method: str, directory: Path) -> Path:
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["run"].update(name=f"scale_{agents}", steps=steps)
    config["env"]["kwargs"]["N"] = agents
    config["agents"]["count"] = agents
    # A default DQN agent: no world model, no consensus (those are their own benchmarks), no
    # landmark assignment.
    config["agents"].pop("world_model", None)
    config["agents"].pop("world_model_fit_transitions", None)
    # No landmark assignment either: at N agents it floods for the ring's diameter (N / 2 rounds)
    # before every episode and relabels each row for all N landmarks, so memory and time would
    # measure the main job's protocol rather than the runtime (a 64-agent run with it on held
    # 328 MB per agent, 2026-11-25).
    config["agents"].pop("landmarks", None)
    # Learning starts early so the memory sample includes a training learner.
    config["agents"]["learner"]["learning_starts"] = 256
    config["protocols"]["consensus"] = {"enabled": False}
    config["topology"] = {"kind": topology}
    config["launch"] = {"start_method": method, "live_view": "off"}
    path = directory / f"scale_{method}_{agents}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_one(agents: int, steps: int | None, topology: str, method: str, timeout_s: float, keep: Path | None,
            default_job: bool = False) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="parley-scale-")) if keep is None else keep
    if default_job:
        config_path = default_job_config(steps, workdir)
        run_dir = workdir / "run_default_job"
    else:
        config_path = make_config(agents, steps, topology, method, workdir)
        run_dir = workdir / f"run_{method}_{agents}"
    load_before = os.getloadavg()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launched_at = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", str(config_path), "--run-dir", str(run_dir)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    events_path = run_dir / "events.jsonl"
    last_full_sample: dict[str, dict] | None = None
    every_process: dict[str, dict] | None = None  # node (or "fork_server") -> role and memory, all alive
    agent_peaks: dict[str, float] = {}
    zygote_sample = None
    peak_total_pss = 0.0
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.terminate()
            timed_out = True
            break
        events = read_events(events_path)
        names = {e["event"] for e in events}
        if "started" in names and "run_complete" not in names and "shutdown" not in names:
            launched = {e["node"]: (e["pid"], e.get("role")) for e in events if e["event"] == "launched"}
            memory = {node: smaps_rollup_mb(pid) for node, (pid, _) in launched.items()}
            sample = {node: memory[node] for node, (_, role) in launched.items() if role == "agent"}
            if len(sample) == agents and all(value is not None for value in sample.values()):
                last_full_sample = sample
                peak_total_pss = max(peak_total_pss, sum(v["pss"] for v in sample.values()))
                for node, value in sample.items():
                    agent_peaks[node] = max(agent_peaks.get(node, 0.0), value["pss"])
                zygote = next((e for e in events if e["event"] == "zygote_ready"), None)
                if zygote is not None:
                    zygote_sample = smaps_rollup_mb(zygote["pid"]) or zygote_sample
                if all(value is not None for value in memory.values()):
                    every_process = {node: {"role": launched[node][1], **memory[node]} for node in sorted(memory)}
                    if zygote_sample is not None:
                        every_process["fork_server"] = {"role": "fork_server", **zygote_sample}
        time.sleep(1.0)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    load_after = os.getloadavg()

    events = read_events(events_path)
    by_name: dict[str, dict] = {}
    for event in events:
        if event["node"] is None:
            by_name.setdefault(event["event"], event)
    result: dict = {
        "agents": agents,
        "method": method,
        "topology": topology,
        "steps_budget": steps,
        "exit_code": process.returncode,
        "timed_out": timed_out,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "wall_s": round(time.time() - launched_at, 1),
        "run_dir": str(run_dir),
    }
    if "run_started" in by_name and "started" in by_name:
        result["ready_s"] = round(by_name["started"]["t"] - by_name["run_started"]["t"], 2)
    complete = next((e for e in events if e["event"] == "run_complete"), None)
    if complete is not None and "started" in by_name:
        result["steps_per_s"] = round(complete["steps"] / max(complete["t"] - by_name["started"]["t"], 1e-9), 2)
    if last_full_sample:
        for key in ("rss", "pss", "private"):
            values = [v[key] for v in last_full_sample.values()]
            result[f"{key}_mb_mean"] = round(sum(values) / len(values), 1)
            result[f"{key}_mb_max"] = round(max(values), 1)
        result["agents_pss_total_mb_peak"] = round(peak_total_pss, 1)
    if zygote_sample:
        result["zygote_pss_mb"] = round(zygote_sample["pss"], 1)
    if every_process:
        result["processes"] = {node: {key: round(value, 1) if isinstance(value, float) else value for key, value in fields.items()}
                               for node, fields in every_process.items()}
        for node, peak in agent_peaks.items():
            result["processes"][node]["pss_peak"] = round(peak, 1)
    result.update(link_totals(run_dir, complete["steps"] if complete is not None else None))
    if process.returncode != 0:
        result["stderr_tail"] = stderr.decode(errors="replace")[-1500:]
    return result


def link_totals(run_dir: Path, steps: int | None) -> dict:
    """Messages and bytes per directed agent -> agent edge over the run (mean over edges), and per
    lockstep step on each agent's link to the env server, from the agents' last link counters."""
    latest: dict[str, float] = {}  # link/<from>_to_<to>/<counter> -> its last (cumulative) value
    for metrics in sorted((run_dir / "nodes").glob("agent_*/metrics.jsonl")):
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the end of the run
            latest.update((key, value) for key, value in record.items()
                          if key.startswith("link/") and key.endswith(("/sent", "/bytes")))
    peer = {"sent": [], "bytes": []}
    env = {"sent": [], "bytes": []}
    for key, value in latest.items():
        _, edge, counter = key.split("/")
        (peer if not edge.endswith("_to_env") else env)[counter].append(value)
    result: dict = {}
    if peer["sent"]:
        result["msgs_per_peer_edge"] = round(sum(peer["sent"]) / len(peer["sent"]), 1)
        result["kb_per_peer_edge"] = round(sum(peer["bytes"]) / len(peer["bytes"]) / 1e3, 1)
    if env["sent"] and steps:
        result["env_msgs_per_step"] = round(sum(env["sent"]) / len(env["sent"]) / steps, 2)
        result["env_bytes_per_step"] = round(sum(env["bytes"]) / len(env["bytes"]) / steps, 1)
    return result


def format_table(results: list[dict]) -> str:
    columns = [
        ("agents", "agents"), ("method", "method"), ("topology", "topology"), ("exit", "exit_code"),
        ("ready s", "ready_s"), ("steps/s", "steps_per_s"), ("RSS MB", "rss_mb_mean"),
        ("PSS MB", "pss_mb_mean"), ("PSS max", "pss_mb_max"), ("private MB", "private_mb_mean"),
        ("zygote PSS", "zygote_pss_mb"), ("msgs/peer edge", "msgs_per_peer_edge"), ("KB/peer edge", "kb_per_peer_edge"),
        ("env msgs/step", "env_msgs_per_step"), ("env B/step", "env_bytes_per_step"),
        ("load before", "load_before"), ("load after", "load_after"),
    ]  # fmt: skip
    rows = [[title for title, _ in columns]]
    for result in results:
        row = []
        for _, key in columns:
            value = result.get(key)
            if isinstance(value, list):
                value = "/".join(f"{x:.2f}" for x in value)
            row.append("-" if value is None else str(value))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append("per agent: mean over agents of the last smaps_rollup sample with every agent alive; per peer edge: "
                 "what one agent sent one neighbour over the run; env: what an agent sent the env server per step")  # fmt: skip
    return "\n".join(lines)


def format_processes(result: dict) -> str:
    """The default job's memory, one row per process."""
    lines = [f"{'process':<14} {'role':<12} {'RSS MB':>8} {'PSS MB':>8} {'private MB':>11} {'PSS peak':>9}"]
    for node, fields in result.get("processes", {}).items():
        peak = fields.get("pss_peak")
        lines.append(f"{node:<14} {fields['role'] or '-':<12} {fields['rss']:>8.1f} {fields['pss']:>8.1f} "
                     f"{fields['private']:>11.1f} {'-' if peak is None else f'{peak:.1f}':>9}")
    lines.append("")
    lines.append(f"exit {result['exit_code']}, ready {result.get('ready_s', '-')} s, {result.get('steps_per_s', '-')} steps/s, "
                 f"load {result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}; the last sample with every process "
                 "alive (PSS peak: the agent's largest sample over the run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="4,8,16,32", help="comma-separated agent counts")
    parser.add_argument("--methods", default="fork_server,spawn", help="start methods to compare")
    parser.add_argument(
        "--spawn-max-agents", type=int, default=16,
        help="skip spawn above this many agents (32 spawned agents need ~10 GB on a shared machine)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="lockstep steps per run (default 200; --default-job: the config's)")
    parser.add_argument("--default-job", action="store_true", help="the shipped default config, memory per process")
    parser.add_argument("--topology", default="ring", help="topology.kind")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--keep", type=Path, help="write configs and run dirs here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    if args.default_job:
        count = yaml.safe_load(BASE_CONFIG.read_text())["agents"]["count"]
        result = run_one(count, args.steps, "", "", args.timeout, args.keep, default_job=True)
        print(json.dumps(result, indent=2) if args.json else format_processes(result))
        return 0 if result["exit_code"] == 0 else 1
    args.steps = 200 if args.steps is None else args.steps
    results = []
    for agents in [int(x) for x in args.agents.split(",")]:
        for method in args.methods.split(","):
            if method == "spawn" and agents > args.spawn_max_agents:
                continue
            result = run_one(agents, args.steps, args.topology, method, args.timeout, args.keep)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
