"""A chaos soak on real processes: the main job under a seeded fault plan, then invariants checked
from the run directory alone.

    python bench/chaos.py --minutes 2 --seed 1 [--steps-per-s 10] [--soak-dir DIR]
                          [--shrink-runs 6] [--save docs/results/chaos.json --page docs/results/chaos.md]
    python bench/chaos.py --replay PLAN.yaml     # a written (shrunk) plan, run and checked again
    python bench/chaos.py --check RUN_DIR        # the invariants of a finished run, nothing run

The plan (`draw_plan`) is a fault every 10-30 s of env time, drawn from the seed: kill -9 of an
agent or the env server (the on-failure policy restarts both), SIGSTOP / SIGCONT of an agent,
a partition of an agent and its heal, a degraded link and its repair, the run's disk filled
and freed (root only: the run directory lives on a tmpfs of its own, which a ballast file fills;
what a full disk does is documented: the node the disk refuses stops cleanly with whole lines,
and the run goes on through the restart policy or, when the orchestrator's own events are
refused, stops with exit 1 and is resumed once the disk is freed, as an operator would), and
the orchestrator killed (kill -9) and the run resumed with `orchestrate resume`. The run is paced
(`env.max_steps_per_s`), so faults are set on the env server's step (`at_step`): the same plan
hits the same steps however loaded the machine, and a resumed run goes on with the faults not
yet fired (orchestrator/faults.py). The orchestrator kills are this script's: it watches the env
server's metrics and kills the orchestrator once the step is reached.

Invariants (`check_run`), each PASS / FAIL with figures, from the run directory alone:
- exit: the last orchestrator's `run_finished` says exit 0 and the budget was spent;
- env steps: every env-server incarnation (restart or resumed run) went on after the newest
  step recorded before it (none run twice), and the steps it resumed past are at most the
  ones no record can show (within one env metrics row);
- restores: every agent incarnation that joined past step 0 said what it lost ("lost on
  restart"), and its checkpoint was the newest of those its node dir kept at the end or older
  only by generations saved later;
- noticed: every kill was seen as an exit, every pause as `paused`, every network fault applied
  by every node it went to, each within its bound (the orchestrator's silence limit, the fault
  hold), and a cut-off agent's neighbours said it was down within the membership timeout;
- processes: no process of the run is alive after it (pid files, and any process whose command
  line names the run directory);
- files: every events / metrics line parses (a line torn by a kill -9 is counted), every
  checkpoint and replay generation verifies its seal and loads, the env resume point has a
  valid slot;
- memory: every node's resident memory, sampled by this script every few seconds and written
  beside the run directory, stays under `--memory-bound-mb` and does not grow (the median of a
  node's last quarter of samples at most 1.3x, or 100 MB over, that of its second quarter);
- return (with `--fault-free`): the final evaluation return within `--return-band` of the gap
  between the random and the scripted-oracle return of the same seed's run without faults.
Not checked (no record in the run directory says it): that a step skipped while a killed env
server was down was counted (its steps are not logged one by one).

A planted bug shows the soak can fail: `--plant skip-resume-point` runs every process of the run
with an env server that never saves its resume point (a `sitecustomize` put first on the run's
PYTHONPATH; Parley's code is not touched), so a restarted env server starts over and steps run
twice; the soak must FAIL and its shrunk plan must fail again when replayed.

When an invariant fails, the plan is shrunk by delta debugging (protocols/sim/simplan.py's
`shrink_plan`, the simulator's, on real processes here: each try is a whole run, so
`--shrink-runs` caps them) and the smallest failing plan is written as YAML that
`orchestrate up configs/4agents_ring.yaml` takes as overrides (with `--replay` for its
orchestrator kills).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import results_page  # noqa: E402
from orchestrator.cli import live_run_processes  # noqa: E402
from orchestrator.rundir import read_jsonl  # noqa: E402
from protocols.seeds import derive_seed  # noqa: E402

CONFIG = REPO / "configs" / "4agents_ring.yaml"
AGENTS = ["agent_0", "agent_1", "agent_2", "agent_3"]
KINDS = ("kill_agent", "kill_env", "pause", "partition", "link", "disk", "kill_orchestrator")
DISK_MB = 1024  # the tmpfs the run directory lives on when disk faults are drawn (a light run writes ~300 MB)
# Planted bugs (`--plant`): a sitecustomize module each process of the run imports at start-up.
PLANT_SAYS = {"skip-resume-point": "the env server never saves its resume point, so a restarted one starts the run over"}
PLANTS = {
    "skip-resume-point": (
        "from env_server import resume as _resume\n"
        "_resume.ResumeFile.save = lambda self, point: None  # planted by bench/chaos.py: no resume point is ever saved\n"
    ),
}
# CPU-light overrides of the main job for a shared machine: 2 copies instead of 8, frequent
# checkpoints (a restart has something to restore), and the lockstep paced so that a plan in
# steps is a plan in seconds.
LIGHT = ["env.num_copies=2", "env.eval_every_steps=400", "env.eval_episodes=2", "agents.checkpoint_every_steps=100",
         "agents.replay_save_every_steps=100", "agents.metrics_every_steps=50", "launch.live_view=off"]
ORPHAN_WAIT_S = 25.0  # nodes stop on their own within 15 s of the orchestrator's death (protocols/run/control.py)


@dataclass(frozen=True)
class ChaosFault:
    at_step: int
    kind: str  # one of KINDS
    node: str = ""  # the target (empty for the orchestrator)
    until_step: int | None = None  # pause, partition, link: when it is undone


@dataclass(frozen=True)
class ChaosPlan:
    """What `shrink_plan` needs of a plan: `events`, `with_events`, `seed`."""

    seed: int
    steps: int
    steps_per_s: float
    events: tuple[ChaosFault, ...]

    def with_events(self, events) -> "ChaosPlan":
        return dataclasses.replace(self, events=tuple(events))


def draw_plan(seed: int, minutes: float, steps_per_s: float, every_s: tuple[float, float] = (10.0, 30.0),
              kinds: tuple[str, ...] = KINDS) -> ChaosPlan:
    """A fault every `every_s` (uniform) of paced env time, from the first gap to 10 s before the end."""
    rng = np.random.default_rng(derive_seed(seed, 0, "chaos"))
    steps = int(minutes * 60 * steps_per_s)
    low, high = every_s
    events, t = [], float(rng.uniform(low, high))
    while t < minutes * 60 - 10:
        kind = kinds[int(rng.integers(len(kinds)))]
        at = int(t * steps_per_s)
        lasts = int(rng.uniform(2, 8) * steps_per_s)
        node = {"kill_env": "env", "kill_orchestrator": ""}.get(kind, AGENTS[int(rng.integers(len(AGENTS)))])
        node = "" if kind == "disk" else node  # the run's disk: every node on this machine shares it
        until = min(at + lasts, steps - 1) if kind in ("pause", "partition", "link", "disk") else None
        events.append(ChaosFault(at, kind, node, until))
        t += float(rng.uniform(low, high))
    return ChaosPlan(seed, steps, steps_per_s, tuple(events))


def schedule_of(plan: ChaosPlan) -> list[dict]:
    """The plan's faults.schedule (the orchestrator kills and the disk are not in it: this script does them)."""
    schedule = []
    for fault in plan.events:
        if fault.kind == "kill_agent" or fault.kind == "kill_env":
            schedule.append({"at_step": fault.at_step, "kind": "kill", "nodes": [fault.node]})
        elif fault.kind == "pause":
            schedule += [{"at_step": fault.at_step, "kind": "pause", "nodes": [fault.node]},
                         {"at_step": fault.until_step, "kind": "resume", "nodes": [fault.node]}]
        elif fault.kind == "partition":
            schedule += [{"at_step": fault.at_step, "kind": "partition", "nodes": [fault.node]},
                         {"at_step": fault.until_step, "kind": "heal", "nodes": [fault.node]}]
        elif fault.kind == "link":
            schedule += [{"at_step": fault.at_step, "kind": "link", "nodes": [fault.node],
                          "link": {"delay_s": 0.05, "loss": 0.3}},
                         {"at_step": fault.until_step, "kind": "link", "nodes": [fault.node], "link": {}}]
    return schedule


def overrides_of(plan: ChaosPlan) -> dict:
    """The config sections that replay `plan` on configs/4agents_ring.yaml (with LIGHT)."""
    return {
        "run": {"seed": plan.seed, "steps": plan.steps},
        "env": {"max_steps_per_s": plan.steps_per_s},
        "faults": {"restart": {"policy": "on-failure", "max_restarts": 50, "backoff_s": 0.5,
                               "roles": ["agent", "env_server"]},
                   "schedule": schedule_of(plan)},
    }


def plan_yaml(plan: ChaosPlan, failed: list[str], plant: str | None = None) -> str:
    header = [f"# Chaos plan: {len(plan.events)} faults (seed {plan.seed}); failing: {', '.join(failed) or 'nothing'}"
              f"{f'; with the planted bug {plant}' if plant else ''}.",
              "# orchestrate up configs/4agents_ring.yaml --set <these sections> replays the scheduled faults;",
              "# python bench/chaos.py --replay THIS_FILE replays them with the orchestrator kills too."]
    body = {"chaos": {"seed": plan.seed, "steps": plan.steps, "steps_per_s": plan.steps_per_s, "plant": plant,
                      "faults": [dataclasses.asdict(f) for f in plan.events]},
            **overrides_of(plan)}
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120)


def load_plan(path: Path) -> tuple[ChaosPlan, str | None]:
    """A written plan and the planted bug it ran with (None: none)."""
    chaos = yaml.safe_load(path.read_text())["chaos"]
    plan = ChaosPlan(int(chaos["seed"]), int(chaos["steps"]), float(chaos["steps_per_s"]),
                     tuple(ChaosFault(**f) for f in chaos["faults"]))
    return plan, chaos.get("plant")


# ------------------------------------------------------------------------------------------
# Running a plan
# ------------------------------------------------------------------------------------------


def orchestrate(*args: str, log_path: Path, plant: Path | None = None) -> subprocess.Popen:
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    if plant is not None:  # the planted bug's sitecustomize comes first, for every process of the run
        path.insert(0, str(plant))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def env_step(run_dir: Path) -> int:
    rows = read_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl") if (run_dir / "nodes" / "env" / "metrics.jsonl").exists() else []
    return max((int(row.get("step", 0)) for row in rows), default=0)


class RunDisk:
    """The run directory's own file system, so that a disk fault fills the run's disk and no other:
    a tmpfs of `DISK_MB` mounted at the run directory's parent, filled by a ballast file and freed
    by deleting it. Mounting needs root; `available()` says whether this machine allows it."""

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point
        self.ballast = mount_point / "ballast"
        self.mounted = False

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and "tmpfs" in Path("/proc/filesystems").read_text()

    def mount(self) -> None:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(self.mount_point)], check=True)
        self.mounted = True

    def fill(self) -> int:
        """Take every free byte (a whole tmpfs page at a time); returns the bytes taken."""
        taken = 0
        with open(self.ballast, "ab", buffering=0) as ballast:
            chunk = b"\0" * (1 << 20)
            while True:
                try:
                    taken += ballast.write(chunk)
                except OSError:  # ENOSPC: full
                    break
            try:
                while True:
                    taken += ballast.write(b"\0" * 4096)
            except OSError:
                pass
        return taken

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self, keep_to: Path | None) -> None:
        """Copy the run directory out (the tmpfs goes with the unmount), then unmount."""
        if not self.mounted:
            return
        self.free()
        if keep_to is not None:
            shutil.copytree(self.mount_point / "run", keep_to, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("sock", "*.sock"))
        subprocess.run(["umount", "-l", str(self.mount_point)], check=False)
        self.mounted = False


@dataclass
class RunTrace:
    """What this script saw while a plan ran: problems, resident memory per node, disk faults."""

    problems: list[str] = dataclasses.field(default_factory=list)
    memory: dict[str, list[tuple[float, int]]] = dataclasses.field(default_factory=dict)  # node -> (t, RSS bytes)
    disk_fills: list[dict] = dataclasses.field(default_factory=list)


def resident_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


MEMORY_EVERY_S = 5.0
RESUMES_AFTER_DISK = 10  # a run stopped by a full disk is resumed at most this many times


def run_plan(plan: ChaosPlan, run_dir: Path, deadline_s: float, *, beside: Path, plant: Path | None = None,
             disk: RunDisk | None = None) -> RunTrace:
    """Run `plan` to its end (the orchestrator killed and the run resumed at each kill step; the
    disk filled and freed, and a run a full disk stopped resumed); returns what this script saw.
    Its own files (the orchestrators' output, the memory samples) go to `beside`, off the run's disk."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = beside / "orchestrate.log"
    args = ["up", str(CONFIG), "--run-dir", str(run_dir)]
    for setting in LIGHT:
        args += ["--set", setting]
    for section, value in overrides_of(plan).items():
        for key, item in value.items():
            args += ["--set", f"{section}.{key}={json.dumps(item)}"]
    kills = sorted(f.at_step for f in plan.events if f.kind == "kill_orchestrator")
    fills = sorted((f.at_step, f.until_step) for f in plan.events if f.kind == "disk")
    if fills and disk is None:
        raise ValueError("the plan fills the disk, but the run directory has no disk of its own (needs root)")
    trace = RunTrace()
    full_until: tuple[int, float] | None = None  # while the disk is full: (until step, until monotonic time)
    resumes_after_disk = 0
    said_from = log_path.stat().st_size if log_path.exists() else 0  # where this orchestrator's output begins
    process = orchestrate(*args, log_path=log_path, plant=plant)
    give_up = time.monotonic() + deadline_s
    next_sample = 0.0
    while True:
        try:
            process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + MEMORY_EVERY_S
            for node, pid in live_run_processes(run_dir).items():
                if (rss := resident_bytes(pid)) is not None:
                    trace.memory.setdefault(node, []).append((time.time(), rss))
        step = env_step(run_dir)
        if full_until is not None and (step >= full_until[0] or now >= full_until[1] or process.poll() is not None):
            disk.free()
            trace.disk_fills[-1]["freed_at_step"] = step
            full_until = None
        if process.poll() is not None:
            with log_path.open("rb") as log:
                log.seek(said_from)
                stopped_by_disk = b"no space left" in log.read()
            if process.returncode != 0 and stopped_by_disk and resumes_after_disk < RESUMES_AFTER_DISK \
                    and step < plan.steps and not live_processes(run_dir):
                # A full disk stops a run cleanly (exit 1, whole lines): resume it, as an operator would.
                resumes_after_disk += 1
                if trace.disk_fills:
                    trace.disk_fills[-1]["run_stopped"] = True
                said_from = log_path.stat().st_size
                process = orchestrate("resume", str(run_dir), log_path=log_path, plant=plant)
                continue
            break  # this orchestrator ended: the run's end
        if now > give_up:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            trace.problems.append(f"the run did not end within {deadline_s:.0f} s; stopped")
            break
        if fills and full_until is None and step >= fills[0][0]:
            at, until = fills.pop(0)
            taken = disk.fill()
            trace.disk_fills.append({"at_step": step, "bytes": taken, "run_stopped": False})
            full_until = (until, now + (until - at) / plan.steps_per_s)
        if kills and step >= kills[0]:
            kills.pop(0)
            process.kill()  # kill -9 of the orchestrator
            process.wait()
            waited_until = time.monotonic() + ORPHAN_WAIT_S
            while live_processes(run_dir) and time.monotonic() < waited_until:
                time.sleep(0.5)
            if (left := live_processes(run_dir)):
                trace.problems.append(f"nodes still alive {ORPHAN_WAIT_S:.0f} s after the orchestrator's kill -9: {left} "
                                      "(stopped with `orchestrate down`)")
                orchestrate("down", str(run_dir), "--wait", "10", log_path=log_path).wait()
            said_from = log_path.stat().st_size
            process = orchestrate("resume", str(run_dir), log_path=log_path, plant=plant)
    if full_until is not None:
        disk.free()
    if process.returncode != 0:
        trace.problems.append(f"the last orchestrator exited {process.returncode}")
    (beside / "memory.json").write_text(json.dumps({"memory": trace.memory, "disk_fills": trace.disk_fills}))
    return trace


def live_processes(run_dir: Path) -> dict[str, int]:
    """The run's processes still alive: its pid files, and any process naming the run dir."""
    found = dict(live_run_processes(run_dir))
    needle = str(run_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.setdefault(f"pid {entry.name}", int(entry.name))
        except OSError:
            continue
    return found


# ------------------------------------------------------------------------------------------
# Invariants, from the run directory alone
# ------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    name: str
    passed: bool
    figures: str


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(path: Path) -> list[tuple[float, str]]:
    """(unix time, line) of a node log's timestamped lines."""
    import datetime as dt

    lines = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if (match := LOG_TIME.match(line)):
                when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                lines.append((when, line))
    return lines


def check_run(run_dir: Path, memory_bound_mb: float = 1500.0, fault_free: Path | None = None,
              return_band: float = 0.5, memory_file: Path | None = None) -> list[Verdict]:
    """Every invariant of a finished run; the memory samples are read from `memory_file` (default:
    `memory.json` beside the run directory, where `run_plan` writes them), the fault-free run's
    return from its directory."""
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    events = read_jsonl(run_dir / "events.jsonl")
    verdicts = [check_exit(events, resolved), check_env_steps(run_dir, events), check_restores(run_dir, events),
                check_noticed(run_dir, events, resolved), check_processes(run_dir), check_files(run_dir)]
    memory_file = memory_file or run_dir.parent / "memory.json"
    if memory_file.exists():
        verdicts.append(check_memory(json.loads(memory_file.read_text())["memory"], memory_bound_mb))
    if fault_free is not None:
        verdicts.append(check_return(run_dir, fault_free, return_band))
    return verdicts


def faults_of_run(run_dir: Path) -> dict:
    """What a run went through, from its directory: the scheduled faults by kind (an undo, a
    resume or heal, counted with its fault), the orchestrator's kills (each resumed run after the
    first that did not follow a clean end) and the disk fills (`memory.json` beside it)."""
    events = read_jsonl(run_dir / "events.jsonl")
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    kinds: Counter = Counter()
    for event in events:
        if event["event"] != "fault" or event["kind"] in ("resume", "heal"):
            continue
        if event["kind"] == "kill":
            kinds["kill_env" if "env" in (event.get("nodes") or {}) else "kill_agent"] += 1
        elif event["kind"] == "link":
            kinds["link"] += 0.5  # a degradation and its repair are one fault
        else:
            kinds[event["kind"]] += 1
    starts = sum(event["event"] == "run_started" for event in events)
    trace = run_dir.parent / "memory.json"
    fills = json.loads(trace.read_text()).get("disk_fills", []) if trace.exists() else []
    stopped_by_disk = sum(fill.get("run_stopped", False) for fill in fills)
    kinds["kill_orchestrator"] = starts - 1 - stopped_by_disk
    kinds["disk"] = len(fills)
    counts = {kind: int(count) for kind, count in sorted(kinds.items()) if count}
    return {"run_dir": str(run_dir), "faults_by_kind": counts, "faults": sum(counts.values()),
            "env_steps": resolved["run"]["steps"], "steps_per_s": resolved["env"]["max_steps_per_s"],
            "seed": resolved["run"]["seed"], "wall_s": round(events[-1]["t"] - events[0]["t"], 1)}


def check_memory(samples: dict[str, list[tuple[float, int]]], bound_mb: float) -> Verdict:
    """Each node's resident memory under the bound, and not growing: the median of its last quarter
    of samples at most 1.3x (or 100 MB over) the median of its second quarter."""
    over, grew, peaks = [], [], {}
    for node, rows in sorted(samples.items()):
        rss = [value / 2**20 for _, value in rows]
        peaks[node] = round(max(rss))
        if max(rss) > bound_mb:
            over.append(f"{node} {max(rss):.0f} MB")
        if len(rss) >= 8:
            n = len(rss)
            second, last = float(np.median(rss[n // 4:n // 2])), float(np.median(rss[3 * n // 4:]))
            if last > max(1.3 * second, second + 100):
                grew.append(f"{node} {second:.0f} -> {last:.0f} MB")
    sampled = sum(len(rows) for rows in samples.values())
    return Verdict(f"every node's memory under {bound_mb:g} MB and not growing", bool(samples) and not over and not grew,
                   f"{sampled} samples every {MEMORY_EVERY_S:g} s; peak MB {peaks or '-'}; over: {over or 'none'}; "
                   f"grew: {grew or 'none'}")


def final_evaluation(run_dir: Path) -> dict[str, float]:
    """The last evaluation's mean return and the random and oracle returns of the run's env metrics."""
    found: dict[str, float] = {}
    for row in read_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl"):
        for key in ("eval/return_mean", "eval/random_return_mean", "eval/oracle_return_mean"):
            if key in row:
                found[key] = float(row[key])
    return found


def check_return(run_dir: Path, fault_free: Path, band: float) -> Verdict:
    faulted, clean = final_evaluation(run_dir), final_evaluation(fault_free)
    needed = ("eval/return_mean", "eval/random_return_mean", "eval/oracle_return_mean")
    if not all(key in faulted for key in needed[:1]) or not all(key in clean for key in needed):
        return Verdict("final return within the band of the fault-free run", False,
                       f"missing evaluation rows: faulted {sorted(faulted)}, fault-free {sorted(clean)}")
    gap = clean["eval/oracle_return_mean"] - clean["eval/random_return_mean"]
    difference = faulted["eval/return_mean"] - clean["eval/return_mean"]
    return Verdict(f"final return within {band:g} of the random-to-oracle gap of the fault-free run",
                   abs(difference) <= band * abs(gap),
                   f"faulted {faulted['eval/return_mean']:.2f}, fault-free {clean['eval/return_mean']:.2f} "
                   f"(difference {difference:+.2f}; gap {gap:.2f}, band ±{band * abs(gap):.2f})")


def check_exit(events: list[dict], resolved: dict) -> Verdict:
    starts = [e for e in events if e["event"] == "run_started"]
    finished = [e for e in events if e["event"] == "run_finished"]
    complete = [e for e in events if e["event"] == "run_complete"]
    code = finished[-1]["exit_code"] if finished else None
    steps = complete[-1]["steps"] if complete else None
    ok = code == 0 and steps == resolved["run"]["steps"]
    return Verdict("the run exited 0", ok, f"{len(starts)} orchestrators ({len(starts) - 1} resumes, "
                   f"{len(starts) - len(finished)} killed); last exit {code}; env steps {steps} of {resolved['run']['steps']}")


def check_env_steps(run_dir: Path, events: list[dict]) -> Verdict:
    """Each env-server incarnation's first step against the newest step recorded before it: an
    incarnation that says "resumed at step N" starts at N, one that does not starts at step 0."""
    lines = log_lines(run_dir / "nodes" / "env" / "log")
    starts = [when for when, line in lines if " starting: " in line and "env server" in line]
    resumes = []
    for index, started in enumerate(starts[1:], 1):  # the first incarnation starts the run (or resumes it)
        until = starts[index + 1] if index + 1 < len(starts) else float("inf")
        said = [line for when, line in lines if started <= when < until and "resumed at step" in line]
        resumes.append((started, int(re.search(r"resumed at step (\d+)", said[0]).group(1)) if said else 0))
    rows = read_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl")
    rerun, gaps = [], []
    for when, step in resumes:
        before = [int(r["step"]) for r in rows if r.get("t", 0) < when]
        newest = max(before, default=0)
        if step <= newest - 1:  # the step recorded last may have been the one in flight
            rerun.append(f"resumed at {step} after recording {newest}")
        gaps.append(step - newest)
    ok = not rerun
    figures = (f"{len(resumes)} env incarnations after the first; first step minus newest recorded: {gaps or '-'}"
               + (f"; RUN TWICE: {rerun}" if rerun else "") + " (a skip within the gap between two env metrics rows is not visible)")
    return Verdict("no env step run twice", ok, figures)


def check_restores(run_dir: Path, events: list[dict]) -> Verdict:
    """Every agent incarnation that joined past step 0 said what it lost ("lost on restart"), and
    restored a checkpoint no older than the generation before the newest one due by the env
    step recorded before it started (agents save at their own step, which may lag the env's).
    An incarnation that never joined (no "driving" line: its own files refused, or the run
    stopped around it while it started) restored nothing, so it has nothing to say."""
    every = int(yaml.safe_load((run_dir / "resolved.yaml").read_text())["agents"]["checkpoint_every_steps"])
    env_rows = read_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl")
    said, silent, older, lost_steps, stopped_early = 0, [], [], [], []
    for agent in AGENTS:
        lines = log_lines(run_dir / "nodes" / agent / "log")
        starts = [when for when, line in lines if "starting, run seed" in line]
        for i, started in enumerate(starts[1:], 1):
            end = starts[i + 1] if i + 1 < len(starts) else float("inf")
            during = [line for when, line in lines if started <= when < end]
            lost = [line for line in during if "lost on restart" in line]
            if not lost:
                if any(" ERROR stopping: " in line for line in during):
                    stopped_early.append(f"{agent} #{i} (its own files refused)")
                elif not any(" driving " in line for line in during):
                    stopped_early.append(f"{agent} #{i} (the run stopped before it joined)")
                else:
                    silent.append(f"{agent} #{i}")
                continue
            said += 1
            lost_steps.append(int(re.search(r"(\d+) steps of learning lost", lost[0]).group(1)))
            reached = max((int(r["step"]) for r in env_rows if r.get("t", 0) < started), default=0)
            due = (reached // every) * every - every
            restored = re.search(r"restored checkpoint of step (\d+)", lost[0])
            if due > 0 and (restored is None or int(restored.group(1)) < due):
                older.append(f"{agent} #{i}: {lost[0].split('lost on restart: ')[1][:90]} (env at {reached})")
    ok = not silent and not older
    return Verdict("restarted agents restored their newest checkpoint and said what they lost", ok,
                   f"{said} restarts said what they lost (steps lost: {lost_steps or '-'}); silent: {silent or 'none'}; "
                   f"stopped before joining, nothing restored: {stopped_early or 'none'}; "
                   f"older than one generation before the newest due: {older or 'none'}")


def check_noticed(run_dir: Path, events: list[dict], resolved: dict) -> Verdict:
    status_s = float(resolved["protocols"]["control"]["status_every_s"])
    silence_bound = 3 * status_s + 2 * status_s  # the orchestrator's silence limit, checked once per status
    exit_bound = 2 * status_s
    membership = resolved["protocols"]["membership"]
    down_bound = float(membership["timeout_s"]) + float(membership["heartbeat_every_s"]) + 1.0
    late, counted = [], Counter()
    for i, fault in enumerate(e for e in events if e["event"] == "fault"):
        kind, t = fault["kind"], fault["t"]
        later = [e for e in events if e["t"] >= t - 0.05]
        if kind in ("kill", "pause"):
            want = "exited" if kind == "kill" else "paused"
            for node in fault.get("nodes", {}):
                undone = next((e["t"] for e in later if e["event"] == "fault" and e["kind"] == "resume"
                               and node in e.get("nodes", {})), None)
                if kind == "pause" and undone is not None and undone - t < silence_bound:
                    continue  # resumed before the orchestrator could tell it from a slow node
                seen = next((e["t"] - t for e in later if e["event"] == want and e["node"] == node), None)
                bound = exit_bound if kind == "kill" else silence_bound
                if seen is None or seen > bound:
                    late.append(f"{kind} {node}: {want} after {seen if seen is None else round(seen, 2)} s (bound {bound:g} s)")
                counted[kind] += 1
        elif kind == "resume":  # a SIGCONT: the node is seen running again (if it was ever seen paused)
            for node in fault.get("nodes", {}):
                paused_at = max((e["t"] for e in events if e["event"] == "fault" and e["kind"] == "pause"
                                 and node in e.get("nodes", {}) and e["t"] <= t), default=None)
                seen_paused = paused_at is not None and any(
                    e["event"] == "paused" and e["node"] == node and paused_at <= e["t"] <= t + 0.05 for e in events)
                counted[kind] += 1
                if not seen_paused:
                    continue  # resumed before the orchestrator could tell it from a slow node: nothing to notice
                seen = next((e["t"] - t for e in later if e["event"] == "resumed" and e["node"] == node), None)
                if seen is None or seen > silence_bound:
                    late.append(f"resume {node}: resumed after {seen if seen is None else round(seen, 2)} s "
                                f"(bound {silence_bound:g} s)")
        elif fault.get("nodes"):
            position = fault["position"]
            applied = next((e for e in later if e["event"] == "fault_applied" and e["position"] == position), None)
            refused = next((e for e in later if e["event"] == "fault_not_applied"
                            and str(position) in {str(k) for k in e.get("missing", {})}), None)
            if applied is None or refused is not None:
                late.append(f"{kind} at {fault.get('step')}: not applied by every node {refused and refused['missing']}")
            counted[kind] += 1
            if kind == "partition":
                for node in fault.get("targets", []):
                    if not node.startswith("agent_"):
                        continue
                    index = AGENTS.index(node)
                    for neighbour in (AGENTS[index - 1], AGENTS[(index + 1) % 4]):
                        seen = next((when - t for when, line in log_lines(run_dir / "nodes" / neighbour / "log")
                                     if when >= t and f"neighbour {node} is down" in line), None)
                        heal = next((e["t"] for e in later if e["event"] == "fault" and e["kind"] == "heal"), None)
                        if (heal is None or heal - t > down_bound) and (seen is None or seen > down_bound):
                            late.append(f"partition {node}: {neighbour} said it down after {seen} s (bound {down_bound:g} s)")
    return Verdict("every fault noticed within its bound", not late,
                   f"{sum(counted.values())} faults checked ({dict(counted)}); late or unseen: {late or 'none'}")


def check_processes(run_dir: Path) -> Verdict:
    left = live_processes(run_dir)
    return Verdict("no process outlives the run", not left, f"alive after the run: {left or 'none'}")


def check_files(run_dir: Path) -> Verdict:
    from agent_node.persistence import load_checkpoint
    from protocols.storage.files import read_sealed
    from env_server.resume import SLOT_BYTES, _decode_slot

    problems, counts, torn = [], Counter(), 0
    for path in sorted(run_dir.rglob("*.jsonl")):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                torn += 1
                problems.append(f"{path.relative_to(run_dir)}:{number} does not parse")
        counts["jsonl"] += 1
    for path in sorted(run_dir.glob("nodes/*/checkpoints/step-*.pt")):
        try:
            load_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - each unreadable file is a finding
            problems.append(f"{path.relative_to(run_dir)}: {error}")
        counts["checkpoints"] += 1
    for path in sorted(run_dir.glob("nodes/*/replay/step-*.npz")):
        try:
            np.load(io.BytesIO(read_sealed(path)), allow_pickle=False).files
        except Exception as error:  # noqa: BLE001
            problems.append(f"{path.relative_to(run_dir)}: {error}")
        counts["replays"] += 1
    resume = run_dir / "nodes" / "env" / "resume.bin"
    if resume.exists():
        data = resume.read_bytes()
        slots = [_decode_slot(data[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]) for i in (0, 1)]
        if all(isinstance(slot, str) for slot in slots):
            problems.append(f"resume.bin: no valid slot ({slots})")
        counts["resume points"] += 1
    return Verdict("every file in the run directory readable", not problems,
                   f"{dict(counts)} read; torn jsonl lines {torn}; problems: {problems[:5] or 'none'}")


# ------------------------------------------------------------------------------------------
# The soak
# ------------------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    plant: Path | None = None  # a directory with the planted bug's sitecustomize
    memory_bound_mb: float = 1500.0
    fault_free: Path | None = None  # the same seed's run without faults, for the return band
    return_band: float = 0.5


def soak(plan: ChaosPlan, attempt_dir: Path, options: SoakOptions) -> tuple[list[Verdict], RunTrace]:
    """Run `plan` into `attempt_dir/run` and check it. With disk faults the run lives on a tmpfs of
    its own while it runs (`attempt_dir/disk`), checked there and copied to `attempt_dir/run`."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    deadline_s = plan.steps / plan.steps_per_s * 3 + 180
    disk = RunDisk(attempt_dir / "disk") if any(f.kind == "disk" for f in plan.events) else None
    run_dir = attempt_dir / "run"
    if disk is not None:
        disk.mount()
        run_dir = disk.mount_point / "run"
    try:
        trace = run_plan(plan, run_dir, deadline_s, beside=attempt_dir, plant=options.plant, disk=disk)
        verdicts = check_run(run_dir, options.memory_bound_mb, options.fault_free, options.return_band,
                             memory_file=attempt_dir / "memory.json")
        if disk is not None:
            stopped = sum(fill["run_stopped"] for fill in trace.disk_fills)
            verdicts.append(Verdict("every disk fill was freed", all("freed_at_step" in f for f in trace.disk_fills),
                                    f"{len(trace.disk_fills)} fills ({sum(f['bytes'] for f in trace.disk_fills) / 2**20:.0f} MB "
                                    f"in all); {stopped} stopped the run, which was resumed"))
    finally:
        if disk is not None:
            disk.unmount(keep_to=attempt_dir / "run")
    if trace.problems:
        verdicts.append(Verdict("the soak ran the plan", False, "; ".join(trace.problems)))
    return verdicts, trace


def print_verdicts(verdicts: list[Verdict]) -> None:
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.name}: {verdict.figures}")
    print("NOT CHECKED  a skipped env step counted: the env server logs no step one by one, so a step "
          "skipped across a restart cannot be told from one run but not recorded (within one metrics row)")


def render(record: dict, source: str) -> str:
    plant = record.get("plant")
    title = "Chaos soak: the main job under faults" + (f", with the planted bug {plant}" if plant else "")
    page = results_page.header(record, title, source)
    if plant:
        page += (f"The bug is planted on purpose ({plant}: {PLANT_SAYS[plant]}); the soak must FAIL, and the plan it "
                 "shrinks to must fail again when replayed (`--replay`).\n\n")
    if "run_dir" in record:  # `--check`: what the run went through, from its directory
        page += (f"The invariants of the soak's run directory ({record['run_dir']}), checked after it ended; faults "
                 f"injected by kind, from its events: {record['faults_by_kind']} ({record['faults']} in all, over "
                 f"{record['env_steps']} env steps paced at {record['steps_per_s']} steps/s, run seed {record['seed']}, "
                 f"{record['wall_s'] / 60:.0f} min of wall time from its first event to its last).\n\n")
    else:
        page += (f"Faults injected by kind: {record['faults_by_kind']} ({record['faults']} in all, plan seed "
                 f"{record['seed']}, {record['minutes']} min of paced env time at {record['steps_per_s']} steps/s, a "
                 f"fault every {record.get('fault_every_s', [10, 30])[0]:g}-{record.get('fault_every_s', [10, 30])[1]:g} s).\n\n")
    page += results_page.table([("invariant", "left", lambda r: r["name"]), ("verdict", "left", lambda r: r["verdict"]),
                                ("figures", "left", lambda r: r["figures"])], record["rows"])
    page += "\nNot checked: a skipped env step counted (no per-step record).\n"
    if record.get("shrunk"):
        page += f"\nShrunk failing plan ({record['shrunk_file']}):\n\n```yaml\n{record['shrunk']}```\n"
    return page


def plant_dir(name: str, soak_dir: Path) -> Path:
    """A directory holding the planted bug's sitecustomize, for the run's PYTHONPATH."""
    directory = soak_dir / f"plant-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(PLANTS[name])
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps-per-s", type=float, default=10.0)
    parser.add_argument("--fault-every-s", type=float, nargs=2, default=(10.0, 30.0), metavar=("LOW", "HIGH"),
                        help="the gap between two faults, uniform in [LOW, HIGH] seconds of paced env time")
    parser.add_argument("--soak-dir", type=Path, default=None)
    parser.add_argument("--shrink-runs", type=int, default=6, help="whole runs the shrinker may spend (0: no shrinking)")
    parser.add_argument("--replay", type=Path, default=None, help="a plan written by an earlier soak (its plant too)")
    parser.add_argument("--check", type=Path, default=None, help="only check the invariants of this run directory")
    parser.add_argument("--plant", choices=sorted(PLANTS), default=None, help="run with a planted bug: the soak must fail")
    parser.add_argument("--fault-free", action="store_true",
                        help="also run the same seed without faults and check the final return against it")
    parser.add_argument("--return-band", type=float, default=0.5,
                        help="with --fault-free: the largest return difference, as a fraction of the random-to-oracle gap")
    parser.add_argument("--memory-bound-mb", type=float, default=1500.0)
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--page", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.minutes <= 0.5:
        parser.error(f"--minutes: expected more than 0.5 (a fault every 10-30 s), got {args.minutes}")
    low, high = args.fault_every_s
    if not 0 < low <= high:
        parser.error(f"--fault-every-s: expected 0 < LOW <= HIGH seconds, got {low:g} {high:g}")
    if args.check is not None:
        verdicts = check_run(args.check, args.memory_bound_mb)
        print_verdicts(verdicts)
        if args.save or args.page:  # a record of this check, what the run went through read from its directory
            record = results_page.begin("bench/chaos.py", argv if argv is not None else sys.argv[1:])
            record.update(faults_of_run(args.check))
            record["rows"] = [{"name": v.name, "verdict": "PASS" if v.passed else "FAIL", "figures": v.figures}
                              for v in verdicts]
            results_page.finish(record, args.save, args.page, render)
        return 0 if all(v.passed for v in verdicts) else 1
    record = results_page.begin("bench/chaos.py", argv if argv is not None else sys.argv[1:])
    kinds = KINDS if RunDisk.available() else tuple(kind for kind in KINDS if kind != "disk")
    if kinds != KINDS:
        print("no disk faults: mounting the run's own tmpfs needs root")
    if args.replay:
        plan, plant = load_plan(args.replay)
        plant = args.plant or plant
    else:
        plan, plant = draw_plan(args.seed, args.minutes, args.steps_per_s, (low, high), kinds), args.plant
    soak_dir = args.soak_dir or Path(f"/tmp/parley-chaos-{os.getpid()}")
    options = SoakOptions(plant=plant_dir(plant, soak_dir) if plant else None, memory_bound_mb=args.memory_bound_mb,
                          return_band=args.return_band)
    print(f"plan: {len(plan.events)} faults {dict(Counter(f.kind for f in plan.events))}, {plan.steps} steps"
          f"{f', planted bug {plant}' if plant else ''}; soak dir {soak_dir}")
    if args.fault_free:
        clean_verdicts, _ = soak(plan.with_events([]), soak_dir / "fault_free", SoakOptions(plant=options.plant))
        if not all(v.passed for v in clean_verdicts):
            print_verdicts(clean_verdicts)
            print("the fault-free run failed its own invariants: no return band to check against")
            return 1
        options.fault_free = soak_dir / "fault_free" / "run"
    verdicts, _ = soak(plan, soak_dir / "main", options)
    print_verdicts(verdicts)
    failed = [v.name for v in verdicts if not v.passed]
    shrunk_text, shrunk_file = "", ""
    if failed and args.shrink_runs > 0 and plan.events:
        from protocols.sim.simplan import shrink_plan

        tries = iter(range(args.shrink_runs))

        def violations_of(candidate: ChaosPlan) -> list[str]:
            number = next(tries, None)
            if number is None:  # out of runs: count it as passing, so the shrinker keeps what it has
                return []
            found, _ = soak(candidate, soak_dir / f"shrink_{number}", options)
            return [v.name for v in found if not v.passed and v.name in failed]

        shrunk = shrink_plan(plan, violations_of, known_violations=failed)
        shrunk_text = plan_yaml(shrunk.plan, shrunk.violations, plant)
        shrunk_file = str(soak_dir / "shrunk_plan.yaml")
        Path(shrunk_file).write_text(shrunk_text)
        print(f"shrunk to {len(shrunk.plan.events)} of {len(plan.events)} faults in {min(shrunk.runs, args.shrink_runs)} runs: {shrunk_file}")
    (soak_dir / "plan.yaml").write_text(plan_yaml(plan, failed, plant))
    record.update(seed=plan.seed, minutes=args.minutes, steps_per_s=plan.steps_per_s, faults=len(plan.events),
                  fault_every_s=[low, high], plant=plant,
                  faults_by_kind=dict(Counter(f.kind for f in plan.events)), shrunk=shrunk_text, shrunk_file=shrunk_file,
                  rows=[{"name": v.name, "verdict": "PASS" if v.passed else "FAIL", "figures": v.figures} for v in verdicts])
    if args.save or args.page:
        results_page.finish(record, args.save, args.page, render)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
