"""Where the main job's CPU goes: every process of one `orchestrate up configs/4agents_ring.yaml`,
its CPU seconds split into learner updates, acting, relabelling and replay, protocols, messages
and transport, the env step, logging and metrics, and the rest, beside its idle time.

    .venv/bin/python bench/main_job_cpu.py --save docs/results/main_job_cpu.json --page docs/results/main_job_cpu.md
    .venv/bin/python bench/main_job_cpu.py --steps 3000                    # a quick pass, printed only
    .venv/bin/python bench/main_job_cpu.py --set agents.world_model=null --set protocols.consensus.enabled=false
    .venv/bin/python bench/main_job_cpu.py --page-from docs/results/main_job_cpu.json --page docs/results/main_job_cpu.md

How: the bench starts the run itself and, as each process appears (the orchestrator it started,
`zygote.pid`, `nodes/<id>/pid`), attaches py-spy to it (`pip install '.[profile]'`; `py-spy record
--nonblocking --format raw`: collapsed stacks, the process never paused). Every 0.25 s it reads
each process's CPU (user + system, /proc/<pid>/stat, all its threads, dead ones included) and
each thread's (/proc/<pid>/task/<tid>/stat, and its time queued for a CPU from schedstat); the
last reading before the process exits is its total. A process's CPU is then split:

- the zmq I/O threads (`ZMQbg/*`, C++ threads py-spy cannot see): messages and transport;
- the rest (its Python threads) in proportion to py-spy's samples of them, each sample given the
  category of the first rule in `RULES` that matches any frame of its stack (so a `Channel.send`
  inside a consensus round is transport, a `ReplayBuffer.sample` inside a gradient step is replay).

py-spy leaves out threads asleep, but a thread that was woken and waits for a CPU is runnable
and is sampled where it sleeps: on a loaded machine many samples sit in `Poller.poll` or
`Condition.wait`, and a process that wakes another (the byte after a shared-memory body) is often
preempted by it inside that write. Those samples (`WAITS`, matched on the innermost frame) are
left out of the split and counted apart; the few microseconds those syscalls themselves cost are
spread over the rest. A preemption anywhere else lands where the thread happened to be, in
proportion to its CPU, and does not skew the split.
The zygote (which imports torch and the node code once, then forks every node) is counted whole
as start-up. Idle is a process's wall time (from its pid file to its exit) less its CPU; of it,
the time its threads waited in a run queue (schedstat) is what load took.

A process's categories sum to its CPU by construction; what the split says is only as good as the
sampling (25 Hz by default: a few thousand samples per agent in a full run) and the rules.
Unmatched frames are `other`, shown, never hidden. The page also lists the lines of our code where
the samples are, whatever library they call (`own_lines`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_page  # noqa: E402
from runs import REPO, run_record  # noqa: E402

CONFIG = "configs/4agents_ring.yaml"
PAGE_TITLE = "Where the main job's CPU goes"

# ---------------------------------------------------------------------------------------- rules

LEARNER = "learner updates"
ACTING = "acting"
REPLAY = "relabelling and replay"
WORLD_MODEL = "world model (fit)"
PROTOCOLS = "protocols"
TRANSPORT = "messages and transport"
ENV_STEP = "env step"
EVALUATION = "evaluation and reference lines"
LOGGING = "logging and metrics"
PERSISTENCE = "checkpoints and resume files"
REPORT = "run report (after the run)"
START_UP = "start-up"
LOOP = "node loop and control"
OTHER = "other"
CATEGORIES = (LEARNER, ACTING, REPLAY, WORLD_MODEL, PROTOCOLS, TRANSPORT, ENV_STEP, EVALUATION, LOGGING,
              PERSISTENCE, REPORT, START_UP, LOOP, OTHER)

# A sample's category: the first rule here that matches any frame of its stack. Each rule is
# (category, file, function): `file` a prefix of the frame's file as `module_path` writes it (the
# path in this repository, or in site-packages, or in the standard library), `function` a prefix
# of py-spy's function name (`Class.method`), "" for any. The order is what makes it work: what is
# called from everywhere (imports, files, metrics, sockets) comes before what calls it.
RULES: tuple[tuple[str, str, str], ...] = (
    # imports (the nodes' are mostly done by the zygote before the fork)
    (START_UP, "<frozen importlib", ""),
    (START_UP, "agent_node/node.py", "AgentNode.__init__"),
    (START_UP, "env_server/__main__.py", "make_copies"),
    (START_UP, "env_server/__main__.py", "start_server"),
    (START_UP, "orchestrator/prelaunch.py", ""),
    (START_UP, "orchestrator/plan.py", ""),
    (START_UP, "orchestrator/config.py", ""),
    # checkpoints, the replay's own file and the env server's resume point (what `resume` reads)
    (PERSISTENCE, "agent_node/persistence.py", ""),
    (PERSISTENCE, "env_server/server.py", "EnvServer.save_resume_point"),
    (PERSISTENCE, "env_server/resum", ""),  # resume.py, resumption.py
    (PERSISTENCE, "protocols/storage/durable_state.py", ""),
    (PERSISTENCE, "protocols/storage/files.py", ""),
    # metrics.jsonl, TensorBoard, the status lines to the orchestrator, the logs
    (LOGGING, "protocols/storage/", ""),
    (LOGGING, "tensorboardX/", ""),
    (LOGGING, "multiprocessing/queues.py", "Queue._feed"),  # tensorboardX's writer feeds its queue from a thread
    (LOGGING, "logging/", ""),
    (LOGGING, "agent_node/node_reporting.py", ""),
    (LOGGING, "agent_node/node.py", "AgentNode.write_metrics"),
    (LOGGING, "agent_node/node.py", "AgentNode.accumulate_metrics"),
    (LOGGING, "env_server/reporting.py", ""),
    (LOGGING, "env_server/server.py", "EnvServer.write_"),  # write_metrics, write_periodic_metrics
    (LOGGING, "protocols/run/control.py", "ControlClient.send_status"),
    (LOGGING, "orchestrator/status.py", ""),
    (LOGGING, "orchestrator/runtime.py", "LiveView"),
    # the orchestrator's report at the end of the run (summary, plots)
    (REPORT, "orchestrator/report.py", ""),
    (REPORT, "orchestrator/evaluate.py", ""),
    (REPORT, "matplotlib/", ""),
    # sockets, codecs, the shared-memory lockstep, emulated links, signatures
    (TRANSPORT, "protocols/net/", ""),
    (TRANSPORT, "protocols/codec/", ""),
    (TRANSPORT, "zmq/", ""),
    (TRANSPORT, "msgpack/", ""),
    (TRANSPORT, "hmac.py", ""),
    (TRANSPORT, "env_server/client_bodies.py", ""),
    (TRANSPORT, "agent_node/peers.py", "PeerMesh.send"),
    (TRANSPORT, "agent_node/env_client.py", ""),
    # the env server's greedy evaluations and its random and scripted-oracle lines
    (EVALUATION, "env_server/evaluator.py", ""),
    (EVALUATION, "env_server/evaluation.py", ""),
    (EVALUATION, "env_server/baselines.py", ""),
    # the world model's fit and training data (its averaging is consensus: protocols)
    (WORLD_MODEL, "agent_node/world_models/", ""),
    # the replay buffer, transition assembly, the landmark relabelling of own and partners' rows
    (REPLAY, "agent_node/replay.py", ""),
    (REPLAY, "agent_node/transitions.py", ""),
    (REPLAY, "agent_node/reward_models.py", ""),
    (REPLAY, "agent_node/landmarks/session.py", "LandmarkSession.training_rows"),
    (REPLAY, "agent_node/landmarks/session.py", "LandmarkSession._relabelled"),
    (REPLAY, "agent_node/landmarks/session.py", "SpreadLayout.goal_reward"),
    (REPLAY, "agent_node/landmarks/capability.py", "LandmarksCapability.feed_learner"),
    (REPLAY, "agent_node/node.py", "AgentNode._record_transition"),
    # gradient steps (the batch they sample is replay, above)
    (LEARNER, "agent_node/algos/", "DQNAgent.update"),
    (LEARNER, "agent_node/algos/", "DQNAgent._gradient_step"),
    (LEARNER, "agent_node/algos/learner_parts.py", ""),
    (LEARNER, "agent_node/node.py", "AgentNode._learn_one_slice"),
    (LEARNER, "agent_node/node.py", "AgentNode.take_owed_updates"),
    # the policy's forward pass and what conditions its input
    (ACTING, "agent_node/algos/", "DQNAgent.act"),
    (ACTING, "agent_node/algos/", "DQNAgent.q_values"),
    (ACTING, "agent_node/landmarks/", "LandmarksCapability.condition"),
    (ACTING, "agent_node/landmarks/", "LandmarkSession.condition"),
    (ACTING, "agent_node/node.py", "AgentNode._answer"),
    # landmark agreement (flooding, assignment), hindsight sharing, consensus, membership
    (PROTOCOLS, "protocols/engines/", ""),
    (PROTOCOLS, "agent_node/consensus/", ""),
    (PROTOCOLS, "agent_node/landmarks/", ""),
    (PROTOCOLS, "agent_node/peers.py", ""),
    (PROTOCOLS, "agent_node/peer_protocols/", ""),
    (PROTOCOLS, "agent_node/step_talk.py", ""),
    (PROTOCOLS, "scipy/optimize/", ""),  # the Hungarian assignment
    # PettingZoo's stepping, the vector of copies around it, the server's view of positions
    (ENV_STEP, "env_server/vector.py", ""),
    (ENV_STEP, "env_server/global_view.py", ""),
    (ENV_STEP, "env_server/workers.py", ""),
    (ENV_STEP, "mpe2/", ""),
    (ENV_STEP, "pettingzoo/", ""),
    (ENV_STEP, "gymnasium/", ""),
    # what is left of the nodes' and the orchestrator's own loops: dispatch, timers, the barrier,
    # the control channel, the watch on the orchestrator
    (LOOP, "agent_node/", ""),
    (LOOP, "env_server/", ""),
    (LOOP, "protocols/run/", ""),
    (LOOP, "orchestrator/", ""),
)

# Innermost frames where a sampled thread is asleep or was just woken and waits for a CPU (py-spy
# counts a runnable thread as active): left out of the split (module docstring).
WAITS: tuple[tuple[str, str], ...] = (
    ("zmq/sugar/poll.py", "Poller.poll"),
    ("zmq/sugar/poll.py", "select"),
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("threading.py", "Thread.join"),
    ("selectors.py", ""),
    ("multiprocessing/connection.py", "wait"),
    ("queue.py", "Queue.get"),
    # The wake-up byte after a shared-memory body (`os.write` on the peer's pipe): the woken
    # process takes the CPU and the writer sits runnable inside the write. The syscall itself is
    # a few µs (bench/probes/wake_cost.py); samples here are almost all that wait.
    ("protocols/net/shm_lockstep.py", "ShmLink.write"),
)
WAITING = "waiting (left out)"

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r"/lib/python\d+\.\d+/")


def module_path(file: str) -> str:
    """A frame's file as the rules name it: its path inside this repository, inside site-packages,
    or inside the standard library; a frozen module's name as py-spy writes it."""
    if "/site-packages/" in file:
        return file.rsplit("/site-packages/", 1)[1]
    repo = str(REPO) + "/"
    if file.startswith(repo):
        return file[len(repo):]
    match = None
    for match in _STDLIB.finditer(file):
        pass
    if match is not None:
        return file[match.end():]
    return file


def parse_frame(frame: str) -> tuple[str, str]:
    """(module path, function) of one py-spy frame `function (file:line)`; ("", frame) for one
    that has no file (a thread's name, a frame py-spy could not read)."""
    match = _FRAME.match(frame)
    if match is None:
        return "", frame
    return module_path(match["file"]), match["function"]


def _matches(rule_file: str, rule_function: str, path: str, function: str) -> bool:
    return path.startswith(rule_file) and function.startswith(rule_function)


def categorize(frames: list[tuple[str, str]]) -> str:
    """The category of one sampled stack (outermost frame first): WAITING when its innermost frame
    is a wait, else the first rule in RULES that matches any frame, else OTHER."""
    if frames and any(_matches(file, function, *frames[-1]) for file, function in WAITS):
        return WAITING
    for category, rule_file, rule_function in RULES:
        if any(_matches(rule_file, rule_function, path, function) for path, function in frames):
            return category
    return OTHER


OWN_CODE = ("agent_node/", "env_server/", "protocols/", "orchestrator/")


def _stacks(text: str):
    """(frames, raw frames, count) of each line of py-spy's raw output (`record --format raw
    --threads`): one line per distinct stack, `thread (tid): name;frame;frame;... count`."""
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = stack.split(";")
        if raw[0].startswith("thread ("):
            raw = raw[1:]  # the thread's own line, not a frame
        yield [parse_frame(frame) for frame in raw], raw, int(count)


def parse_collapsed(text: str) -> Counter:
    """Samples per category of py-spy's raw output."""
    samples: Counter = Counter()
    for frames, _, count in _stacks(text):
        samples[categorize(frames)] += count
    return samples


def own_lines(text: str) -> Counter:
    """Samples per (innermost line of this repository's code on the stack, its category), waits
    left out: where in our code the time is spent, whatever library it calls."""
    lines: Counter = Counter()
    for frames, raw, count in _stacks(text):
        category = categorize(frames)
        if category == WAITING:
            continue
        own = [(path, function, frame) for (path, function), frame in zip(frames, raw) if path.startswith(OWN_CODE)]
        if own:
            path, function, frame = own[-1]
            line = _FRAME.match(frame)["line"]
            lines[(f"{path}:{line} {function}", category)] += count
        else:
            lines[("(no frame of ours)", category)] += count
    return lines


# ------------------------------------------------------------------------- process bookkeeping

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOT_LINES_KEPT = 30  # per process, in the record
HOT_LINES_SHOWN = 12  # per kind of process, on the page
POLL_S = 0.25


def _stat_fields(path: Path) -> list[str] | None:
    """/proc/.../stat's fields after the command name (field 3 on), or None if it is gone."""
    try:
        return path.read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _comm(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _queued_s(task: Path) -> float | None:
    """Seconds the thread waited in a run queue (schedstat's second field, ns)."""
    try:
        return int((task / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Watched:
    """One process of the run: its CPU as last read, its threads', and its profiler."""

    name: str  # orchestrator, zygote, agent_0, ..., env
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid apart
    first_seen: float
    last_seen: float
    cpu_s: float = 0.0
    threads: dict[int, dict] = field(default_factory=dict)  # tid -> {comm, cpu_s, queued_s}
    spy: subprocess.Popen | None = None
    raw_path: Path | None = None
    spy_log: Path | None = None
    gone: bool = False

    def read(self, now: float) -> None:
        """Refresh the CPU figures; mark the process gone once /proc no longer has it."""
        fields = _stat_fields(Path(f"/proc/{self.pid}/stat"))
        if fields is None or int(fields[19]) != self.start_ticks:
            self.gone = True
            return
        self.cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        self.last_seen = now
        if fields[0] == "Z":
            return  # exited, not reaped yet: its tasks are gone, the totals above are final
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            task_fields = _stat_fields(task / "stat")
            if task_fields is None:
                continue
            queued = _queued_s(task)
            self.threads[int(task.name)] = {
                "comm": _comm(task / "comm"),
                "cpu_s": (int(task_fields[11]) + int(task_fields[12])) / CLOCK_TICKS,
                "queued_s": queued if queued is not None else self.threads.get(int(task.name), {}).get("queued_s", 0.0),
            }


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return int(fields[19]) if fields is not None else None


def _pid_file(path: Path) -> tuple[int, int] | None:
    """(pid, start ticks) of an orchestrator pid file (`pid start`), None if not there yet."""
    try:
        pid_text, start_text = path.read_text().split()
        return int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None


def py_spy() -> str:
    """The py-spy beside this Python, or on PATH; a clear error when it is not installed."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("bench/main_job_cpu.py needs py-spy: pip install '.[profile]' (or pip install py-spy)")
    return found


def start_spy(process: Watched, out_dir: Path, rate: int) -> None:
    process.raw_path = out_dir / f"{process.name}.raw"
    process.spy_log = out_dir / f"{process.name}.spy.log"
    argv = [py_spy(), "record", "--pid", str(process.pid), "--format", "raw", "--output", str(process.raw_path),
            "--rate", str(rate), "--nonblocking", "--threads", "--full-filenames"]
    with process.spy_log.open("w") as log:
        process.spy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _spy_watch(process: Watched, now: float) -> Watched:
    """The profiler of `process`, watched like a process of the run (for its own CPU)."""
    return Watched(f"py-spy {process.name}", process.spy.pid, _start_ticks(process.spy.pid) or 0, now, now)


def _spy_counts(log: Path | None) -> dict:
    """py-spy's own count of samples and errors ("Samples: N Errors: M"), when it wrote one."""
    text = log.read_text() if log is not None and log.exists() else ""
    match = re.search(r"Samples: (\d+) Errors: (\d+)", text)
    return {"samples": int(match[1]), "errors": int(match[2])} if match else {"samples": None, "errors": None}


# ---------------------------------------------------------------------------------- the run

def profile_run(overrides: list[str], run_dir: Path, rate: int, timeout_s: float) -> dict:
    """Run the main job into `run_dir` under py-spy; every process's CPU, split, and the run's."""
    spy_dir = run_dir.parent / f"{run_dir.name}.profile"
    spy_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator", "up", CONFIG, "--run-dir", str(run_dir)]
    for override in ["launch.live_view=off", *overrides]:
        argv += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    with (spy_dir / "orchestrate.log").open("w") as log:
        orchestrator = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    watched: dict[str, Watched] = {}
    spies: list[Watched] = []  # the profilers' own CPU, read the same way
    loads: list[float] = []
    last_load = 0.0
    try:
        start = _start_ticks(orchestrator.pid)
        if start is not None:
            watched["orchestrator"] = Watched("orchestrator", orchestrator.pid, start, started, started)
            start_spy(watched["orchestrator"], spy_dir, rate)
            spies.append(_spy_watch(watched["orchestrator"], started))
        while orchestrator.poll() is None:
            now = time.monotonic()
            if now - started > timeout_s:
                orchestrator.send_signal(signal.SIGINT)
                orchestrator.wait(60)
                raise SystemExit(f"the run did not finish in {timeout_s:.0f} s (--timeout); its directory: {run_dir}")
            pid_files = {"zygote": run_dir / "zygote.pid",
                         **{path.parent.name: path for path in sorted((run_dir / "nodes").glob("*/pid"))}}
            for name, path in pid_files.items():
                found = _pid_file(path)
                if name in watched or found is None or _start_ticks(found[0]) != found[1]:
                    continue
                watched[name] = Watched(name, found[0], found[1], now, now)
                if name != "zygote":  # counted whole as start-up (module docstring)
                    start_spy(watched[name], spy_dir, rate)
                    spies.append(_spy_watch(watched[name], now))
            for process in [*watched.values(), *spies]:
                if not process.gone:
                    process.read(now)
            if now - last_load >= 5.0:
                loads.append(os.getloadavg()[0])
                last_load = now
            time.sleep(POLL_S)
    finally:
        if orchestrator.poll() is None:
            orchestrator.send_signal(signal.SIGINT)
            orchestrator.wait(60)
    wall_s = time.monotonic() - started
    for process in watched.values():
        if process.spy is None:
            continue
        try:
            process.spy.wait(60)  # it writes its file once the process it samples is gone
        except subprocess.TimeoutExpired:
            process.spy.send_signal(signal.SIGINT)
            process.spy.wait(30)
    for process in spies:
        process.read(time.monotonic())
    if orchestrator.returncode != 0:
        tail = (spy_dir / "orchestrate.log").read_text()[-2000:]
        raise SystemExit(f"orchestrate up exited {orchestrator.returncode}; the end of its output:\n{tail}")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = {name: attribute(process) for name, process in watched.items()}
    return {"processes": processes, "wall_s": wall_s, "loads_1min": loads, "spy_dir": str(spy_dir),
            "profilers_cpu_s": sum(process.cpu_s for process in spies),
            # the orchestrator and every descendant it waited for (nodes, zygote), and the profilers
            "children_cpu_s": children.ru_utime + children.ru_stime}


def attribute(process: Watched) -> dict:
    """One process's CPU seconds by category (module docstring), its wall time, idle and queue."""
    zmq_s = sum(thread["cpu_s"] for thread in process.threads.values() if thread["comm"].startswith("ZMQbg"))
    python_s = max(process.cpu_s - zmq_s, 0.0)
    samples: Counter = Counter()
    lines: Counter = Counter()
    if process.raw_path is not None and process.raw_path.exists():
        text = process.raw_path.read_text()
        samples, lines = parse_collapsed(text), own_lines(text)
    counted = sum(count for category, count in samples.items() if category != WAITING)
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    if process.name == "zygote":
        seconds[START_UP] = process.cpu_s
    elif counted == 0:
        seconds[OTHER] = process.cpu_s  # no samples: nothing to split it by (said on the page)
    else:
        for category in CATEGORIES:
            seconds[category] = python_s * samples.get(category, 0) / counted
        seconds[TRANSPORT] += zmq_s
    wall_s = process.last_seen - process.first_seen
    return {"pid": process.pid, "cpu_s": process.cpu_s, "wall_s": wall_s, "idle_s": max(wall_s - process.cpu_s, 0.0),
            "queued_s": sum(thread["queued_s"] for thread in process.threads.values()),
            "zmq_threads_cpu_s": zmq_s, "seconds": seconds, "samples": dict(samples),
            "samples_waiting": samples.get(WAITING, 0), "py_spy": _spy_counts(process.spy_log),
            "hot_lines": [{"where": where, "category": category, "samples": count}
                          for (where, category), count in lines.most_common(HOT_LINES_KEPT)]}


def gradient_steps(run_dir: Path, node: str) -> float | None:
    """The agent's last `dqn/gradient_steps` in its metrics, or None."""
    path = run_dir / "nodes" / node / "metrics.jsonl"
    last = None
    if path.exists():
        for line in path.read_text().splitlines():
            if '"dqn/gradient_steps"' in line:
                last = json.loads(line)["dqn/gradient_steps"]
    return last


STEP_WALL_KEYS = ("lockstep/waiting_s", "lockstep/stepping_s", "lockstep/sending_s", "lockstep/timed_steps")


def env_step_wall(run_dir: Path) -> dict[str, float]:
    """The env server's last sums of its training steps' wall time (env_server/reporting.py,
    `StepWallTime`), {} for a run from before it wrote them."""
    from protocols.storage.jsonlines import latest_values

    found = latest_values(run_dir / "nodes" / "env" / "metrics.jsonl", STEP_WALL_KEYS)
    return found if len(found) == len(STEP_WALL_KEYS) else {}


def step_wall_line(wall: dict[str, float], all_cpu: float, command_s: float) -> str:
    """The page's line on where the env server's wall time went, beside the run's CPU floor."""
    steps = wall["lockstep/timed_steps"]
    per_step = {phase: 1000 * wall[f"lockstep/{phase}_s"] / steps for phase in ("stepping", "sending", "waiting")}
    return (f"- The env server's wall time over its {steps:,.0f} timed training steps (its `lockstep/*` metrics): "
            f"stepping the copies {wall['lockstep/stepping_s']:.1f} s ({per_step['stepping']:.2f} ms a step), "
            f"sending the observations {wall['lockstep/sending_s']:.1f} s ({per_step['sending']:.2f} ms), waiting for "
            f"the agents' actions {wall['lockstep/waiting_s']:.1f} s ({per_step['waiting']:.2f} ms). `orchestrate up` took "
            f"{command_s / (all_cpu / 2):.2f} times its floor on 2 cores ({all_cpu / 2:.1f} s).\n")


def rows_of(processes: dict[str, dict]) -> list[dict]:
    """One row per category: the agents' mean, the env server, the orchestrator and zygote
    together, and every process together (CPU seconds)."""
    agents = [p for name, p in processes.items() if name.startswith("agent_")]
    env = processes.get("env")
    others = [p for name, p in processes.items() if name in ("orchestrator", "zygote")]
    rows = []
    for category in CATEGORIES:
        rows.append({
            "category": category,
            "agent_mean_s": sum(p["seconds"][category] for p in agents) / len(agents) if agents else 0.0,
            "env_s": env["seconds"][category] if env else 0.0,
            "orchestrator_s": sum(p["seconds"][category] for p in others),
            "all_s": sum(p["seconds"][category] for p in processes.values()),
        })
    return rows


# ---------------------------------------------------------------------------------- the page

def _share(row: dict, key: str, whole: float) -> str:
    """`row[key]` as a share of `whole`; blank for the idle rows (not a part of the CPU)."""
    if row.get("idle") or whole <= 0:
        return ""
    return f"{100 * row[key] / whole:.1f} %"


def hot_lines(processes: dict[str, dict]) -> list[dict]:
    """The lines of our code with the most samples over `processes` (one kind: the agents, or the
    env server): each line's share of their counted samples and its CPU seconds (per process)."""
    counted = sum(sum(p["samples"].values()) - p["samples_waiting"] for p in processes.values())
    cpu_s = sum(p["cpu_s"] - p["zmq_threads_cpu_s"] for p in processes.values()) / len(processes)
    merged: Counter = Counter()
    for process in processes.values():
        for line in process["hot_lines"]:
            merged[(line["where"], line["category"])] += line["samples"]
    return [{"where": where, "category": category, "share": count / counted, "cpu_s": cpu_s * count / counted}
            for (where, category), count in merged.most_common(HOT_LINES_SHOWN)] if counted else []


def render(record: dict, source: str) -> str:
    """The results page of a saved record."""
    rows, run, processes = record["rows"], record["run"], record["processes"]
    agents = {name: p for name, p in processes.items() if name.startswith("agent_")}
    agent_cpu = sum(p["cpu_s"] for p in agents.values()) / len(agents)
    env_cpu = processes["env"]["cpu_s"]
    others_cpu = sum(p["cpu_s"] for name, p in processes.items() if name in ("orchestrator", "zygote"))
    all_cpu = sum(p["cpu_s"] for p in processes.values())
    columns = [
        ("category", "left", lambda row: row["category"]),
        ("agent (mean of 4) CPU s", "right", lambda row: f"{row['agent_mean_s']:.1f}"),
        ("share", "right", lambda row: _share(row, "agent_mean_s", agent_cpu)),
        ("env server CPU s", "right", lambda row: f"{row['env_s']:.1f}"),
        ("share", "right", lambda row: _share(row, "env_s", env_cpu)),
        ("orchestrator + zygote CPU s", "right", lambda row: f"{row['orchestrator_s']:.1f}"),
        ("all processes CPU s", "right", lambda row: f"{row['all_s']:.1f}"),
        ("share of all CPU", "right", lambda row: _share(row, "all_s", all_cpu)),
    ]
    agent_wall = sum(p["wall_s"] for p in agents.values()) / len(agents)
    totals = [{"category": "**CPU in all**", "agent_mean_s": agent_cpu, "env_s": env_cpu, "orchestrator_s": others_cpu, "all_s": all_cpu},
              {"category": "idle (wall less CPU)", "idle": True, "agent_mean_s": sum(p["idle_s"] for p in agents.values()) / len(agents),
               "env_s": processes["env"]["idle_s"], "orchestrator_s": sum(p["idle_s"] for n, p in processes.items() if n in ("orchestrator", "zygote")),
               "all_s": sum(p["idle_s"] for p in processes.values())},
              {"category": "of which queued for a CPU", "idle": True, "agent_mean_s": sum(p["queued_s"] for p in agents.values()) / len(agents),
               "env_s": processes["env"]["queued_s"], "orchestrator_s": sum(p["queued_s"] for n, p in processes.items() if n in ("orchestrator", "zygote")),
               "all_s": sum(p["queued_s"] for p in processes.values())}]
    table = results_page.table(columns, [row for row in rows if row["all_s"] > 0.05] + totals)
    loads = run["loads_1min"]
    steps_per_agent = [s for s in run["gradient_steps"].values() if s]
    learner_ms = (1000 * next(row["agent_mean_s"] for row in rows if row["category"] == LEARNER) / (sum(steps_per_agent) / len(steps_per_agent))
                  if steps_per_agent else None)
    settings = record["settings"]
    intro = (
        f"One run of the main job (`orchestrate up {CONFIG}`"
        + "".join(f" --set {o}" for o in settings["overrides"]) + f"), {settings['steps']:,} lockstep steps, every process "
        f"sampled by py-spy at {settings['rate_hz']} Hz (`--nonblocking`), its CPU read from /proc and split "
        f"by the rules in `bench/main_job_cpu.py` (its docstring says how; rows under 0.05 CPU s left out).\n\n"
        f"**The load**: the 1-minute load average read every 5 s during the run was {min(loads):.2f}–{max(loads):.2f} "
        f"(mean {sum(loads) / len(loads):.2f}) on {record['machine']['cores']} cores. The run's own five processes "
        f"and the profilers count in it; the bench does not see what else ran. CPU seconds depend on load less "
        f"than wall time does, but not nothing (caches, the cost of wake-ups, the other core's work).\n\n"
        f"- The run exited {run['record']['exit_code']} with its budget done ({run['record']['steps_done']:,} steps), "
        f"torch {run['record']['torch']}. `orchestrate up` took **{run['wall_s']:.1f} s** from start to exit; the run itself (its "
        f"`run_started` to `run_finished` events) {run['duration_s']:.1f} s."
        f" Every process's CPU together: **{all_cpu:.1f} s** ({all_cpu / run['wall_s']:.2f} cores on average); "
        f"on 2 cores the run cannot take less than half of it, {all_cpu / 2:.1f} s, with perfect overlap.\n"
        f"- An agent's wall time (pid file to exit) {agent_wall:.1f} s, of which CPU {agent_cpu:.1f} s.\n"
        + (f"- Gradient steps per agent: {sum(steps_per_agent) / len(steps_per_agent):,.0f}; "
           f"the agent's learner-update CPU per gradient step: **{learner_ms:.2f} ms** "
           f"(drawing the batch's rows is counted in replay; with `numpy_updates` the compiled step "
           f"gathers them, counted here).\n" if learner_ms is not None else "")
        + (step_wall_line(run["env_step_wall"], all_cpu, run["wall_s"]) if run.get("env_step_wall") else "")
        + f"- The profilers' own CPU (not in the table): {run['profilers_cpu_s']:.1f} s; "
        f"the CPU of every process the bench started and waited for, profilers included "
        f"(getrusage): {run['children_cpu_s']:.1f} s.\n"
    )
    per_process = results_page.table([
        ("process", "left", lambda row: row["name"]),
        ("wall s", "right", lambda row: f"{row['wall_s']:.1f}"),
        ("CPU s", "right", lambda row: f"{row['cpu_s']:.1f}"),
        ("zmq I/O threads CPU s", "right", lambda row: f"{row['zmq_threads_cpu_s']:.1f}"),
        ("queued for a CPU s", "right", lambda row: f"{row['queued_s']:.1f}"),
        ("samples (in a wait, left out)", "right", lambda row: f"{sum(row['samples'].values()):,} ({row['samples_waiting']:,})"),
        ("py-spy errors", "right", lambda row: str(row["py_spy"]["errors"]) if row["py_spy"]["errors"] is not None else "–"),
    ], [{"name": name, **p} for name, p in processes.items()])
    hot = "".join(f"\n{title}:\n\n" + results_page.table([
        ("line of our code (innermost on the stack)", "left", lambda row: f"`{row['where']}`"),
        ("category", "left", lambda row: row["category"]),
        ("share of the CPU", "right", lambda row: f"{100 * row['share']:.1f} %"),
        ("CPU s", "right", lambda row: f"{row['cpu_s']:.1f}"),
    ], hot_lines(group)) for title, group in (("An agent (the four together, CPU s their mean)", agents),
                                               ("The env server", {"env": processes["env"]})))
    reading = (
        "How to read it: a category's CPU seconds are the process's CPU (all its threads, from /proc) "
        "times the share of its samples in that category; the zmq I/O threads' CPU is transport; the "
        "zygote's is start-up. \"Queued for a CPU\" is schedstat's run-queue time of the threads alive "
        "at the last reading: the part of idle that load took. Samples in a wait are those whose "
        "innermost frame is a poll, a condition wait or the wake-up byte written after a shared-memory "
        "body (a runnable thread: woken and waiting for a CPU, or preempted by the process it woke): "
        "left out of the split. `other` is mostly samples with no Python frame (the interpreter's "
        "start and exit) and stacks py-spy read cut short.\n\n"
        "Per process:\n\n" + per_process
        + "\nWhere in our code, whatever library it calls (a sample's innermost frame in `agent_node/`, "
        "`env_server/`, `protocols/`, `orchestrator/`; waits left out; CPU seconds from the process's split):\n" + hot
    )
    return results_page.header(record, PAGE_TITLE, source) + intro + "\n" + table + "\n" + reading


# ---------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="run.steps (the config's 10,000 when not given)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as for orchestrate up")
    parser.add_argument("--rate", type=int, default=25, help="py-spy samples per second per process")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench_main_job_cpu", help="where the run directory goes")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before the run is stopped")
    results_page.add_page_options(parser)
    args = parser.parse_args()
    if results_page.render_saved_page(parser, args, render):
        return 0
    if args.rate <= 0:
        parser.error(f"--rate: expected a positive number of samples per second, got {args.rate}")
    overrides = list(args.set) + ([f"run.steps={args.steps}"] if args.steps is not None else [])
    py_spy()  # fail before the run when it is missing
    record = results_page.begin("bench/main_job_cpu.py", sys.argv[1:])
    run_dir = args.root / time.strftime("%Y%m%d-%H%M%S")
    measured = profile_run(overrides, run_dir, args.rate, args.timeout)

    from orchestrator.config import RESOLVED_FILENAME
    from orchestrator.overrides import load_yaml
    from orchestrator.report import summarize_run

    run = run_record(run_dir, 0)  # the shared rule: a run is read only when it exited 0 with its budget done
    if run["refused"] is not None:
        raise SystemExit(f"{run_dir}: not read: {run['refused']}")
    steps = load_yaml((run_dir / RESOLVED_FILENAME).read_text())["run"]["steps"]
    processes = measured.pop("processes")
    agents = sorted(name for name in processes if name.startswith("agent_"))
    if not agents or "env" not in processes:
        raise SystemExit(f"expected agent processes and an env server in {run_dir}, found {sorted(processes)}")
    record["settings"] = {"config": CONFIG, "overrides": overrides, "steps": steps, "rate_hz": args.rate}
    record["run"] = {**measured, "run_dir": str(run_dir), "record": run, "duration_s": summarize_run(run_dir)["duration_s"],
                     "gradient_steps": {name: gradient_steps(run_dir, name) for name in agents},
                     "env_step_wall": env_step_wall(run_dir)}
    record["processes"] = processes
    record["rows"] = rows_of(processes)
    results_page.finish(record, args.save, args.page, render)
    print(render(record, args.save.name if args.save else "its run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
