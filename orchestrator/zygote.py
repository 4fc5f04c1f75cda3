"""The fork server ("zygote"): imports torch and the node code once, then forks every node.

Why: `import torch` alone costs ~220 MB of private memory per process, so 32 agents started
with `python -m agent_node` hold ~8 GB before they learn anything. Forked from one process that
has already imported everything, the agents share those pages copy-on-write and each pays only
for what it writes itself.

    python -m orchestrator.zygote --fd N --preload torch,agent_node.node,...

It talks to the orchestrator over the inherited unix socket `N`, one JSON object per line:

    zygote → orchestrator   {"ready": true, "preloaded": [...], "failed": {...}, "seconds": 4.2}
    orchestrator → zygote   {"node_id", "module", "args", "env", "log_path", "seed", "comm"}
    zygote → orchestrator   {"node_id", "pid"}  or  {"node_id", "error"}

and exits when the orchestrator closes the socket (end of run, or the orchestrator died).

**Each node is the orchestrator's child, not ours.** The orchestrator marks itself a child
subreaper (PR_SET_CHILD_SUBREAPER) before starting us; we fork an intermediate process, which
forks the node and exits at once. The orphaned node is re-parented to the nearest subreaper —
the orchestrator — which can then wait for it, read its exit code and signal it like any child
it started itself; and the node's parent pid is the orchestrator's, which is how it notices the
orchestrator's death (protocols/run/control.py).

**Fork safety.** Forking copies only the calling thread, so the zygote must have no other
thread and no state that a thread or a socket owns: it is started with OMP/MKL/OpenBLAS thread
counts of 1 (numpy's OpenBLAS would otherwise start a worker thread at import), never creates
a zmq context, runs torch only single-threaded (one warm-up step, tried in a throwaway child
first, and skipped where it starts threads: `warm_up_torch_if_fork_safe`), and checks that it is
single-threaded before every fork. A preloaded module that defines `warm_up()` has it called
once after preloading (the DQN's compiled gradient step loads its machine code there, so the
nodes share it instead of each compiling or loading it). After the fork the node re-seeds Python's, numpy's and
torch's global generators from its own seed (they would otherwise be the zygote's state, the
same in every node), moves into its own session like a subprocess-started node, points stdout
and stderr at its log and runs its module as `__main__`, exactly as `python -m` would.

This module imports no learning code at module level: the preload list comes from the
orchestrator (orchestrator/launcher.py), which itself never imports it.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import logging
import os
import random
import runpy
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

# prctl(2) option: set the calling thread's name (/proc/<pid>/comm, 15 bytes), so `ps` and the
# tests can tell forked nodes apart (their /proc/<pid>/cmdline is still the zygote's).
PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass  # a cosmetic name only


def preload(modules: list[str]) -> tuple[list[str], dict[str, str]]:
    """Import `modules`; a module that fails to import is reported, not fatal (the node then
    imports it itself and fails with its own, clearer error)."""
    loaded, failed = [], {}
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as error:  # noqa: BLE001 - any import error is reported back
            failed[name] = f"{type(error).__name__}: {error}"
    return loaded, failed


def warm_up_torch() -> None:
    """Run one tiny forward, backward and Adam step, single-threaded.

    The first optimizer step imports and initialises a large part of torch lazily (measured
    here: ~70 MB of private memory, most of an agent's own footprint). Done once here, those
    pages are shared by every node instead of written by each. With one intra-op thread this
    creates no thread pool, so forking stays safe (checked before every fork).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = torch.nn.functional.smooth_l1_loss(net(torch.zeros(4, 8)), torch.zeros(4, 2))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def warm_up_modules(modules: list[str]) -> dict[str, str]:
    """Call `warm_up()` of each of `modules` that defines one; what failed, by module (the nodes
    then do that work themselves)."""
    failed = {}
    for name in modules:
        warm_up = getattr(sys.modules.get(name), "warm_up", None)
        if callable(warm_up):
            try:
                warm_up()
            except Exception as error:  # noqa: BLE001 - reported back, not fatal
                failed[f"<{name}.warm_up>"] = f"{type(error).__name__}: {error}"
    return failed


_PROBE_STARTED_THREADS = 2  # the probe's exit code when the warm-up left threads behind


def warm_up_torch_if_fork_safe() -> str | None:
    """Run `warm_up_torch` here if it leaves this process single-threaded; None when it ran, or
    why it was skipped (the nodes then initialise torch themselves: more memory, nothing else).

    A torch build with a device runtime (CUDA, ROCm) starts threads on a machine with a GPU: the
    warm-up's backward and Adam's step ask how many devices there are, which starts the driver's
    thread and an autograd thread per device (seen with torch 2.11+cu130 on an H100:
    'cuda00001800007' and 'pt_autograd_0'; with CUDA_VISIBLE_DEVICES empty the driver's thread
    still starts). A thread cannot be undone and would make every later fork unsafe, so with such
    a build the warm-up is tried first in a throwaway forked child (~1 s). Before this, such a
    zygote refused to fork: `orchestrate up` with the default `launch.start_method` failed on that
    machine, as it would wherever a CUDA build of torch sees a GPU. A CPU build warms up directly."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if not _has_device_runtime(torch):
        warm_up_torch()
        return None
    read_fd, write_fd = os.pipe()
    probe = os.fork()
    if probe == 0:
        code = 1
        try:
            os.close(read_fd)
            warm_up_torch()
            names = thread_names()
            os.write(write_fd, f"{len(names) - 1} thread(s) besides the main one; all: {', '.join(names)}".encode())
            code = 0 if len(names) == 1 else _PROBE_STARTED_THREADS
        except BaseException as error:  # noqa: BLE001 - reported to the zygote through the pipe
            os.write(write_fd, f"{type(error).__name__}: {error}".encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        said = pipe.read().decode(errors="replace")
    _, status = os.waitpid(probe, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == _PROBE_STARTED_THREADS:
        return f"it starts {said}; forking would be unsafe"
    if code != 0:
        return f"it failed in a probe process: {said or f'exit {code}'}"
    warm_up_torch()
    return None


def _has_device_runtime(torch) -> bool:
    """Whether this torch build carries a GPU runtime that may start threads (CUDA or ROCm)."""
    version = getattr(torch, "version", None)
    return bool(getattr(version, "cuda", None) or getattr(version, "hip", None))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def thread_names() -> list[str]:
    """This process's threads by name (/proc/self/task/*/comm), for the reports."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            names.append(task)  # a thread that ended while we looked
    return sorted(names)


def reseed(seed: int) -> None:
    """Give the node's global generators its own seed instead of the zygote's copied state."""
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def become_node(request: dict, close_fds: list[int]) -> None:
    """In the forked node process: set up like `python -m <module> <args>` and run it. Never returns."""
    code = 1
    try:
        os.setsid()  # its own process group, like start_new_session: a terminal Ctrl-C reaches the orchestrator only
        for fd in close_fds:
            os.close(fd)
        log_fd = os.open(request["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null_fd)
        # PYTHONUNBUFFERED in the node's environment would only act at interpreter start-up.
        sys.stdout.reconfigure(write_through=True, line_buffering=True)
        sys.stderr.reconfigure(write_through=True, line_buffering=True)
        os.environ.update(request["env"])
        set_process_name(request.get("comm") or request["node_id"])
        reseed(int(request["seed"]))
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        atexit._run_exitfuncs()
        logging.shutdown()
    except BaseException:  # noqa: BLE001 - the node must never return into the zygote's loop
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def wait_to_be_adopted(away_from: int, timeout_s: float = 10.0) -> None:
    """Block until this new node's parent is no longer the intermediate process `away_from`.

    The node must start as the orchestrator's child: it decides once, at start-up, whether its
    parent pid can tell it of the orchestrator's death (`OrchestratorWatch.from_environment`).
    On a loaded machine the node can get there before the intermediate has exited, and would then
    run unwatched (CI saw one such agent outlive its killed orchestrator). Re-parenting happens as
    the intermediate exits, right after it reports our pid, so this wait is normally under a
    millisecond; after `timeout_s` the node starts anyway, as it did before this wait.
    """
    give_up_at = time.monotonic() + timeout_s
    while os.getppid() == away_from and time.monotonic() < give_up_at:
        time.sleep(0.001)


def fork_node(request: dict, orchestrator_socket: socket.socket) -> int:
    """Fork the node through an intermediate process (see the module docstring); its pid."""
    if (threads := thread_count()) != 1:
        raise RuntimeError(f"refusing to fork with {threads} threads in the zygote (fork copies only one)")
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(read_fd)
            intermediate_pid = os.getpid()
            node = os.fork()
            if node == 0:
                wait_to_be_adopted(away_from=intermediate_pid)
                become_node(request, close_fds=[write_fd, orchestrator_socket.fileno()])
            os.write(write_fd, str(node).encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(intermediate, 0)
    # Once the intermediate is reaped the node has been re-parented to the orchestrator.
    if os.waitstatus_to_exitcode(status) != 0 or not text.isdigit():
        raise RuntimeError(f"the intermediate process failed (status {status}, said {text!r})")
    return int(text)


def serve(orchestrator_socket: socket.socket, preload_modules: list[str]) -> int:
    started = time.monotonic()
    loaded, failed = preload(preload_modules)
    if thread_count() == 1:
        try:
            skipped = warm_up_torch_if_fork_safe()
        except Exception as error:  # noqa: BLE001 - reported; the nodes then initialise torch themselves
            skipped = f"{type(error).__name__}: {error}"
        if skipped is not None:
            failed["<torch warm-up>"] = f"skipped: {skipped}"
        failed.update(warm_up_modules(loaded))
    if threading.active_count() != 1 or thread_count() != 1:
        failed["<threads>"] = f"{thread_count()} threads after preloading ({', '.join(thread_names())}); forking would be unsafe"
        _send(orchestrator_socket, {"ready": False, "failed": failed})
        return 1
    # Objects that exist now are never collected in the nodes: keep the collector from writing
    # to (and so un-sharing) the pages that hold them.
    gc.collect()
    gc.freeze()
    _send(orchestrator_socket, {"ready": True, "preloaded": loaded, "failed": failed, "seconds": time.monotonic() - started})
    reader = orchestrator_socket.makefile("rb")
    for line in reader:
        request = json.loads(line)
        try:
            pid = fork_node(request, orchestrator_socket)
            _send(orchestrator_socket, {"node_id": request["node_id"], "pid": pid})
        except Exception as error:  # noqa: BLE001 - reported to the orchestrator, which fails the run
            _send(orchestrator_socket, {"node_id": request.get("node_id"), "error": f"{type(error).__name__}: {error}"})
    return 0  # the orchestrator closed the socket


def _send(orchestrator_socket: socket.socket, message: dict) -> None:
    orchestrator_socket.sendall((json.dumps(message) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.zygote", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the inherited unix socket to the orchestrator")
    parser.add_argument("--preload", default="", help="comma-separated modules to import before forking")
    args = parser.parse_args(argv)
    set_process_name("parley-zygote")
    orchestrator_socket = socket.socket(fileno=args.fd)
    code = 1
    try:
        code = serve(orchestrator_socket, [name for name in args.preload.split(",") if name])
    finally:
        orchestrator_socket.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip the interpreter's teardown of torch & co. (seconds on a loaded machine): the
        # orchestrator waits for us to exit before it returns.
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
