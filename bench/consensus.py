"""Consensus benchmark: seconds per synchronous round, Parley against raw pyzmq, and rounds to converge.

    python bench/consensus.py [--sizes 1e3,1e5,1e6] [--rings 4,8] [--rounds N] [--repeats N]
                              [--profile] [--quick] [--json]
    python bench/consensus.py --hosts 3 [--sizes ...] [--rounds N] [--repeats N] [--netns-prefix P]

Part 1, in one run so the ratios compare like with like on a noisy machine: for each ring of
agent PROCESSES (`bench/consensus_worker.py`, one per node) and each float32 tensor size, the time
of one synchronous averaging round (Metropolis weights), measured two ways in the same processes,
interleaved (parley, raw, parley, raw, ...) after one warm-up run of each:
- Parley: `SyncConsensus` + `Channel` (envelope codec) + ROUTER inbox / DEALER per neighbour;
- raw: the same exchange hand-written with pyzmq (header + zero-copy buffer, numpy sum).
Each worker times its run from the 'go' to its last round and reports seconds per round; a round
is done when the slowest node is, so a run's figure is the max over workers, and a cell is the
median over `--repeats` runs. Each worker also reports the CPU time of its process (all threads,
zmq's I/O thread included) per round: with more processes than cores the wall time mostly follows
the total work, and the CPU ratio is the steadier figure when other jobs share the machine. Both
modes start from the same tensors and must end with the same values (checked), so the raw
baseline does the same work.

Part 2, no processes: rounds for the sans-IO engines (`rounds_to_tolerance`, Metropolis weights)
to cut disagreement to 1e-6 of its initial value on a ring, a 4x4 torus and an exponential graph
of 16 agents, from the worst-case start (the slowest eigenvector) and from random values.

`--hosts N` (root; instead of both parts): a ring of N workers, each in its own Linux network
namespace with its own address, joined by veth pairs to a bridge in another namespace (the
fixture of the multi-host tests, `tests/integration/netns.py`), talking over tcp with CURVE on
both socket sets: Parley's hub with the run's keys (what agent nodes on several machines do)
against raw pyzmq with CURVE set on its sockets by hand. Measured as in part 1 (same workers,
interleaved, median of repeats) plus the bytes each namespace sent per round on its veth,
TCP/IP headers and CURVE's framing included. The namespaces are named `<--netns-prefix>-<token>-*`
and deleted at the end, also when the run fails or is interrupted (Ctrl-C, SIGTERM). Links
between namespaces have no delay or bandwidth cap: the figures are the software's cost
(encryption, copies, Python), not a network's.

`--profile` adds one Parley run of the largest tensor on the largest ring with agent_0 under
cProfile (CPU time) and prints its top functions (to stderr with `--json`); that run is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from protocols.engines.consensus import rounds_predicted_by_spectrum, rounds_to_tolerance  # noqa: E402
from protocols.engines.topology import (  # noqa: E402
    Topology,
    exponential,
    grid,
    metropolis_weights,
    ring,
    second_largest_eigenvalue_modulus,
)

WORKER = REPO / "bench" / "consensus_worker.py"
STARTUP_TIMEOUT_S = 120.0  # all workers bound, connected and said hello (imports on a loaded machine)
RUN_SLACK_S = 60.0  # on top of the workers' own round deadlines
EXIT_TIMEOUT_S = 10.0
WARMUP_ROUNDS = 2
UNIX_SOCKET_PATH_LIMIT = 107
DEFAULT_NETNS_PREFIX = "parley-cb"
AGREEMENT_TOLERANCE = 1e-4  # float32 values of order 1; both modes sum in float64, in any order
TOLERANCE = 1e-6  # part 2: disagreement cut to this fraction of the initial one


class BenchmarkError(RuntimeError):
    """A worker failed, timed out, or the two modes disagreed."""


# ------------------------------------------------------------------------------------------
# Part 1: rings of processes
# ------------------------------------------------------------------------------------------


def default_rounds(size: int) -> int:
    """Fewer rounds for big tensors: each one costs tens of milliseconds on 8 processes."""
    return 10 if size >= 1_000_000 else 20


def size_label(size: int) -> str:
    """`1000000 -> '1e6'` for powers of ten (the JSON keys), the plain number otherwise."""
    exponent = round(math.log10(size)) if size > 0 else 0
    return f"1e{exponent}" if 10**exponent == size else str(size)


def short_temp_dir() -> str:
    """A private directory for the ipc socket files, short enough for the unix path limit."""
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    directory = tempfile.mkdtemp(prefix="parley-cb-", dir=base)
    longest = f"{directory}/parley-agent_999.sock"
    if len(longest.encode()) > UNIX_SOCKET_PATH_LIMIT - 1:
        shutil.rmtree(directory, ignore_errors=True)
        raise BenchmarkError(f"temp dir {directory} is too long for ipc socket paths (unix limit {UNIX_SOCKET_PATH_LIMIT - 1} bytes)")
    return directory


class WorkerRing:
    """A ring of worker processes and the parent's ROUTER that starts and collects their runs.

    Use as a context manager: on exit every worker is told to quit, then reaped (terminated,
    then killed, if it does not exit in time), and the socket and temp dir are removed.
    """

    def __init__(self, ring_size: int, hosts: list[tuple[str, str]] | None = None) -> None:
        """`hosts`: (network namespace, its address) of each node, for tcp with CURVE between
        namespaces; None: every worker here, ipc between them."""
        self.ring_size = ring_size
        self.nodes = ring(ring_size).nodes
        self.hosts = hosts
        if hosts is not None and len(hosts) != ring_size:
            raise BenchmarkError(f"expected one host per node ({ring_size}), got {len(hosts)}")
        self.socket_dir = short_temp_dir()
        self.context = zmq.Context()
        self.control = self.context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = f"ipc://{self.socket_dir}/control.sock"
        try:
            self.control.bind(self.endpoint)
        except zmq.ZMQError:
            self.control.close(linger=0)
            self.context.term()
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        self.processes: dict[str, subprocess.Popen] = {}
        self.stderr_paths: dict[str, Path] = {}
        self.run_number = 0

    def __enter__(self) -> "WorkerRing":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        tcp_args: list[str] = []
        if self.hosts is not None:
            from protocols.net.transport import generate_run_keys

            keys_dir = generate_run_keys(Path(self.socket_dir) / "keys", self.nodes)
            tcp_args = ["--tcp-hosts", ",".join(address for _, address in self.hosts), "--keys-dir", str(keys_dir)]
        for index, node in enumerate(self.nodes):
            # The control socket stays ipc: a socket file is reachable from every network namespace.
            in_namespace = [] if self.hosts is None else ["ip", "netns", "exec", self.hosts[index][0]]
            self.stderr_paths[node] = Path(self.socket_dir) / f"{node}.stderr"
            with open(self.stderr_paths[node], "wb") as stderr:
                self.processes[node] = subprocess.Popen(
                    [*in_namespace, sys.executable, str(WORKER), "--index", str(index), "--ring", str(self.ring_size),
                     "--socket-dir", self.socket_dir, "--control", self.endpoint, *tcp_args],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO, env=env,
                )
        self._collect("ready", STARTUP_TIMEOUT_S)

    def run(self, mode: str, size: int, rounds: int, profile_node: str | None = None) -> list[dict]:
        """One consensus run on every worker at once; returns each worker's report."""
        self.run_number += 1
        for node in self.nodes:
            command = {"cmd": "run", "mode": mode, "size": size, "rounds": rounds, "run": self.run_number,
                       "profile": node == profile_node}
            self.control.send_multipart([node.encode(), json.dumps(command).encode()])
        reports = self._collect("done", RUN_SLACK_S + rounds * 30.0)
        for node, report in reports.items():
            if report["run"] != self.run_number:
                raise BenchmarkError(f"{node} reported run {report['run']}, expected {self.run_number}")
            report["node"] = node
        return [reports[node] for node in self.nodes]

    def _collect(self, event: str, timeout_s: float) -> dict[str, dict]:
        """One `event` message from every worker, within `timeout_s`; a failed or dead worker
        raises, naming it, with the end of its stderr."""
        reports: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(reports) < len(self.nodes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(self.nodes) - reports.keys())
                raise BenchmarkError(f"no '{event}' from {missing} within {timeout_s:.0f} s")
            # Wake up at least every second to notice a worker that died without a word.
            if self.control.poll(math.ceil(min(remaining, 1.0) * 1000)):
                identity, payload = self.control.recv_multipart()
                node, message = identity.decode(), json.loads(payload)
                if message["event"] == "error":
                    raise BenchmarkError(f"worker {node} failed:\n{message['message']}")
                if message["event"] != event:
                    raise BenchmarkError(f"worker {node} sent {message['event']!r}, expected {event!r}")
                reports[node] = message
            for node, process in self.processes.items():
                if process.poll() is not None and node not in reports:
                    raise BenchmarkError(
                        f"worker {node} exited with code {process.returncode} before '{event}'; stderr:\n{self._stderr_tail(node)}"
                    )
        return reports

    def _stderr_tail(self, node: str) -> str:
        try:
            return self.stderr_paths[node].read_text(errors="replace")[-3000:]
        except OSError:
            return "(no stderr file)"

    def __exit__(self, *exc_info) -> None:
        for node, process in self.processes.items():
            if process.poll() is None:
                try:
                    self.control.send_multipart([node.encode(), b'{"cmd": "quit"}'], flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # not connected (or gone): terminate below
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.control.close(linger=0)
        self.context.term()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def round_time(reports: list[dict]) -> float:
    """A synchronous round is over when the slowest node is done with it."""
    return max(report["s_per_round"] for report in reports)


def cpu_time(reports: list[dict]) -> float:
    """CPU seconds one node spends per round (mean over nodes): the work, whatever the load."""
    return statistics.fmean(report["cpu_s_per_round"] for report in reports)


def sent_bytes_per_round(reports: list[dict]) -> float | None:
    """Bytes one node's namespace sends per round on the wire (mean over nodes); None over ipc."""
    sent = [report["tx_bytes_per_round"] for report in reports]
    return None if None in sent else statistics.fmean(sent)


def check_agreement(reports: list[dict], what: str) -> float | None:
    differences = [r["max_abs_diff_vs_other_mode"] for r in reports if r["max_abs_diff_vs_other_mode"] is not None]
    if not differences:
        return None
    worst = max(differences)
    if not worst <= AGREEMENT_TOLERANCE:
        raise BenchmarkError(f"{what}: Parley and raw results differ by up to {worst:g} (> {AGREEMENT_TOLERANCE:g})")
    return worst


def measure_ring(
    ring_size: int, sizes: list[int], rounds_override: int | None, repeats: int, profile: bool,
    hosts: list[tuple[str, str]] | None = None,
) -> dict:
    """Per tensor size: median seconds per round of each mode; plus the profile text if asked."""
    cells = {}
    profile_report = None
    with WorkerRing(ring_size, hosts) as workers:
        for size in sizes:
            rounds = rounds_override if rounds_override is not None else default_rounds(size)
            what = f"ring {ring_size}, {size_label(size)} params"
            for mode in ("parley", "raw"):  # first touch of buffers, allocator, ipc paths
                workers.run(mode, size, WARMUP_ROUNDS)
            times = {"parley": [], "raw": []}
            cpu_times = {"parley": [], "raw": []}
            sent = {"parley": [], "raw": []}
            worst_difference = 0.0
            for _ in range(repeats):
                for mode in ("parley", "raw"):  # interleaved: load drifts hit both modes alike
                    reports = workers.run(mode, size, rounds)
                    times[mode].append(round_time(reports))
                    cpu_times[mode].append(cpu_time(reports))
                    sent[mode].append(sent_bytes_per_round(reports))
                    difference = check_agreement(reports, what)
                    worst_difference = max(worst_difference, difference or 0.0)
            cells[size] = {
                "rounds": rounds,
                "parley": statistics.median(times["parley"]),
                "raw": statistics.median(times["raw"]),
                "parley_cpu": statistics.median(cpu_times["parley"]),
                "raw_cpu": statistics.median(cpu_times["raw"]),
                "parley_tx_bytes": None if None in sent["parley"] else statistics.median(sent["parley"]),
                "raw_tx_bytes": None if None in sent["raw"] else statistics.median(sent["raw"]),
                "parley_runs": times["parley"],
                "raw_runs": times["raw"],
                "max_abs_diff": worst_difference,
            }
        if profile:
            size = max(sizes)
            rounds = rounds_override if rounds_override is not None else default_rounds(size)
            reports = workers.run("parley", size, rounds, profile_node=workers.nodes[0])
            profile_report = reports[0]["profile"]
    return {"cells": cells, "profile": profile_report}


def namespaces_unavailable() -> str | None:
    """None when this process can make network namespaces; else why not (for --hosts)."""
    if os.geteuid() != 0:
        return "--hosts makes Linux network namespaces, which needs root: run it as root, or leave --hosts out"
    if shutil.which("ip") is None:
        return "--hosts needs the `ip` tool (iproute2) to make network namespaces; it is not installed"
    return None


def measure_across_namespaces(count: int, sizes: list[int], rounds_override: int | None, repeats: int, prefix: str) -> dict:
    """`measure_ring` with each of the `count` workers in a network namespace of its own; the
    namespaces are deleted whatever happens (their `close` also kills what is left inside)."""
    from tests.integration.netns import NamespaceCluster  # the multi-host tests' fixture

    names = [f"h{i}" for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="parley-cb-ns-") as directory:
        cluster = NamespaceCluster(directory=Path(directory), prefix=prefix)
        try:
            cluster.build(names, sshd_on=[])
            hosts = [(cluster.hosts[name].namespace, cluster.hosts[name].address) for name in names]
            outcome = measure_ring(count, sizes, rounds_override, repeats, profile=False, hosts=hosts)
            outcome["namespaces"] = [namespace for namespace, _ in hosts] + [cluster.bridge_namespace]
            return outcome
        finally:
            cluster.close()


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: namespaces and workers go


def print_hosts_table(count: int, outcome: dict, repeats: int) -> None:
    print(f"Synchronous consensus on a ring of {count} processes in {count} network namespaces (veth + bridge, no "
          f"delay), tcp with CURVE on both sides, Metropolis weights, float32, median of {repeats} run(s), max over workers")
    print(f"{'':>17}{'ms per round':^28}{'rounds per s':^22}{'wire KiB sent per round and node':^38}")
    print(f"{'params':>7}{'rounds':>8}{'':>2}{'Parley':>10}{'raw':>9}{'ratio':>7}{'Parley':>11}{'raw':>9}{'':>2}"
          f"{'payload':>10}{'Parley':>10}{'raw':>9}{'ratio':>7}"
          f"{'CPU ms/round/node':>20}")
    for size, cell in outcome["cells"].items():
        payload = 4 * size * 2 / 1024  # float32 to each of a ring node's two neighbours
        parley_kib = cell["parley_tx_bytes"] / 1024
        raw_kib = cell["raw_tx_bytes"] / 1024
        print(f"{size_label(size):>7}{cell['rounds']:>8}{'':>2}{cell['parley'] * 1e3:>10.3f}{cell['raw'] * 1e3:>9.3f}"
              f"{cell['parley'] / cell['raw']:>7.2f}{1 / cell['parley']:>11.1f}{1 / cell['raw']:>9.1f}{'':>2}"
              f"{payload:>10.1f}{parley_kib:>10.1f}{raw_kib:>9.1f}{parley_kib / raw_kib:>7.2f}"
              f"{cell['parley_cpu'] * 1e3:>11.3f} /{cell['raw_cpu'] * 1e3:>7.3f}")
    print("(CPU: Parley / raw. Wire bytes: what the namespace's veth sent, TCP/IP and CURVE framing included; "
          "payload: the float32 shares alone)")


# ------------------------------------------------------------------------------------------
# Part 2: rounds to converge, sans-IO
# ------------------------------------------------------------------------------------------


def convergence_graphs() -> dict[str, Topology]:
    return {"ring16": ring(16), "torus4x4": grid(4, 4, torus=True), "exponential16": exponential(16)}


def convergence_table(tol: float) -> dict[str, dict]:
    rows = {}
    for name, topology in convergence_graphs().items():
        weights = metropolis_weights(topology)
        rows[name] = {
            "degree": int(topology.degrees().max()),
            "lambda2": second_largest_eigenvalue_modulus(weights),
            "predicted": rounds_predicted_by_spectrum(weights, tol),
            "slowest_mode": rounds_to_tolerance(topology, tol, weights="metropolis", initial="slowest_mode"),
            "random": rounds_to_tolerance(topology, tol, weights="metropolis", initial="random", seed=0),
        }
    return rows


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def parse_int_list(text: str, what: str, minimum: int) -> list[int]:
    values = []
    for item in text.split(","):
        try:
            number = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: expected comma-separated numbers like 1e3,1e5, got {item!r}") from None
        if number != int(number) or int(number) < minimum:
            raise argparse.ArgumentTypeError(f"{what}: expected whole numbers >= {minimum}, got {item!r}")
        values.append(int(number))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda t: parse_int_list(t, "--sizes", 1), default=None,
                        help="float32 parameters per tensor, e.g. 1e3,1e5,1e6 (default; --quick: 1e3,1e5)")
    parser.add_argument("--rings", type=lambda t: parse_int_list(t, "--rings", 2), default=None,
                        help="ring sizes in processes, e.g. 4,8 (default; --quick: 4)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per timed run (default: 20, or 10 for tensors of 1e6 and more; --quick: 5)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per mode and cell; the median is kept (default 7; --quick: 1)")
    parser.add_argument("--profile", action="store_true", help="profile agent_0 in one extra Parley run (largest size and ring)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one ring of 4, few rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--hosts", type=int, default=None,
                        help="root: a ring of N workers in N network namespaces, tcp with CURVE, Parley against raw pyzmq "
                        "with CURVE (instead of parts 1 and 2)")
    parser.add_argument("--netns-prefix", default=DEFAULT_NETNS_PREFIX,
                        help=f"with --hosts: namespaces are named PREFIX-<token>-h<i> (default {DEFAULT_NETNS_PREFIX})")
    args = parser.parse_args()
    sizes = args.sizes or ([1_000, 100_000] if args.quick else [1_000, 100_000, 1_000_000])
    rings = args.rings or ([4] if args.quick else [4, 8])
    rounds_override = args.rounds if args.rounds is not None else (5 if args.quick else None)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    if rounds_override is not None and rounds_override < 1:
        parser.error(f"--rounds must be >= 1, got {rounds_override}")
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    if args.hosts is not None:
        if args.hosts < 3:
            parser.error(f"--hosts: expected 3 or more namespaces (a ring), got {args.hosts}")
        if args.rings is not None or args.profile:
            parser.error("--hosts: the ring is one worker per namespace; leave out --rings and --profile")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", args.netns_prefix.replace("-", "")):
            parser.error(f"--netns-prefix: expected a short name of letters, digits and dashes, got {args.netns_prefix!r}")
        reason = namespaces_unavailable()
        if reason is not None:
            print(f"bench/consensus.py: {reason}", file=sys.stderr)
            sys.exit(2)
        run_across_namespaces(args.hosts, sizes, rounds_override, repeats, args.netns_prefix, args.json)
        return

    load_before = os.getloadavg()
    started = time.monotonic()
    convergence = convergence_table(TOLERANCE)
    measured = {ring_size: measure_ring(ring_size, sizes, rounds_override, repeats, args.profile and ring_size == max(rings))
                for ring_size in rings}
    load_after = os.getloadavg()

    result: dict[str, object] = {"round_over_raw_1e6_ring8": None}
    for ring_size, outcome in measured.items():
        for size, cell in outcome["cells"].items():
            key = f"{size_label(size)}_ring{ring_size}"
            result[f"parley_s_per_round_{key}"] = cell["parley"]
            result[f"raw_s_per_round_{key}"] = cell["raw"]
            result[f"round_over_raw_{key}"] = cell["parley"] / cell["raw"]
            result[f"parley_cpu_s_per_round_per_node_{key}"] = cell["parley_cpu"]
            result[f"raw_cpu_s_per_round_per_node_{key}"] = cell["raw_cpu"]
            result[f"cpu_over_raw_{key}"] = cell["parley_cpu"] / cell["raw_cpu"]
            result[f"rounds_timed_{key}"] = cell["rounds"]
            result[f"max_abs_diff_parley_vs_raw_{key}"] = cell["max_abs_diff"]
    tol_label = f"{TOLERANCE:.0e}".replace("e-0", "e-")
    for name, row in convergence.items():
        result[f"rounds_to_{tol_label}_{name}"] = row["slowest_mode"]  # the worst case over starts
        result[f"rounds_to_{tol_label}_{name}_slowest_mode"] = row["slowest_mode"]
        result[f"rounds_to_{tol_label}_{name}_random"] = row["random"]
        result[f"rounds_predicted_{tol_label}_{name}"] = row["predicted"]
        result[f"lambda2_metropolis_{name}"] = row["lambda2"]
    result.update(
        {
            "repeats": repeats,
            "warmup_rounds": WARMUP_ROUNDS,
            "cpu_count": os.cpu_count(),
            "loadavg_1min_before": load_before[0],
            "loadavg_1min_after": load_after[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "wall_s": time.monotonic() - started,
        }
    )

    if args.json:
        print(json.dumps(result))
    else:
        print(f"Synchronous consensus rounds on rings of processes (Metropolis weights, float32, ipc), "
              f"median of {repeats} run(s), max over workers")
        print(f"{'':>22}{'wall time per round':^36}{'CPU ms per round and node':^33}")
        print(f"{'ring':>5}{'params':>9}{'rounds':>8}{'Parley s/round':>16}{'raw s/round':>13}{'ratio':>7}"
              f"{'Parley':>12}{'raw':>10}{'ratio':>9}")
        for ring_size, outcome in measured.items():
            for size, cell in outcome["cells"].items():
                print(f"{ring_size:>5}{size_label(size):>9}{cell['rounds']:>8}{cell['parley']:>16.6f}"
                      f"{cell['raw']:>13.6f}{cell['parley'] / cell['raw']:>7.2f}"
                      f"{cell['parley_cpu'] * 1e3:>12.3f}{cell['raw_cpu'] * 1e3:>10.3f}{cell['parley_cpu'] / cell['raw_cpu']:>9.2f}")
        print()
        print(f"Rounds to cut disagreement to {TOLERANCE:g} of the initial (sans-IO engines, Metropolis weights, 16 agents)")
        print(f"{'graph':<15}{'degree':>7}{'lambda2':>9}{'predicted':>10}{'slowest mode':>13}{'random':>8}")
        for name, row in convergence.items():
            print(f"{name:<15}{row['degree']:>7}{row['lambda2']:>9.4f}{row['predicted']:>10}{row['slowest_mode']:>13}{row['random']:>8}")
        print()
        print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
              f"{os.cpu_count()} cores; wall {result['wall_s']:.0f} s")
    for outcome in measured.values():
        if outcome["profile"]:
            print("\ncProfile of agent_0, one Parley run (not timed):", file=sys.stderr if args.json else sys.stdout)
            print(outcome["profile"], file=sys.stderr if args.json else sys.stdout)


def run_across_namespaces(count: int, sizes: list[int], rounds_override: int | None, repeats: int, prefix: str,
                          as_json: bool) -> None:
    signal.signal(signal.SIGTERM, _raise_system_exit)
    load_before = os.getloadavg()
    started = time.monotonic()
    outcome = measure_across_namespaces(count, sizes, rounds_override, repeats, prefix)
    load_after = os.getloadavg()
    wall_s = time.monotonic() - started
    if as_json:
        result: dict[str, object] = {}
        for size, cell in outcome["cells"].items():
            key = f"{size_label(size)}_hosts{count}_curve"
            for mode in ("parley", "raw"):
                result[f"{mode}_s_per_round_{key}"] = cell[mode]
                result[f"{mode}_rounds_per_s_{key}"] = 1 / cell[mode]
                result[f"{mode}_cpu_s_per_round_per_node_{key}"] = cell[f"{mode}_cpu"]
                result[f"{mode}_wire_bytes_per_round_per_node_{key}"] = cell[f"{mode}_tx_bytes"]
            result[f"round_over_raw_{key}"] = cell["parley"] / cell["raw"]
            result[f"rounds_timed_{key}"] = cell["rounds"]
            result[f"max_abs_diff_parley_vs_raw_{key}"] = cell["max_abs_diff"]
        result.update({"repeats": repeats, "cpu_count": os.cpu_count(), "loadavg_1min_before": load_before[0],
                       "loadavg_1min_after": load_after[0], "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
                       "wall_s": wall_s})
        print(json.dumps(result))
        return
    print_hosts_table(count, outcome, repeats)
    print()
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} cores; "
          f"wall {wall_s:.0f} s; namespaces {', '.join(outcome['namespaces'])} deleted")


if __name__ == "__main__":
    main()
