"""The fork server on real processes: forked nodes are the orchestrator's children, re-seeded,
in their own session, with their own argv, environment, log and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from tests.conftest import REPO

# Runs in its own interpreter: it makes itself a child subreaper, which a pytest process should not.
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from orchestrator.launcher import ForkServerLauncher
    from orchestrator.plan import NodeLaunch

    run_dir = Path(sys.argv[1])
    launcher = ForkServerLauncher(run_dir, ["numpy"], ready_timeout_s=60)
    launcher.prepare()
    results = {}
    for name, seed, code in (("a", 1, 0), ("b", 2, 3), ("c", 1, 0)):
        log = run_dir / f"{name}.log"
        launch = NodeLaunch(node_id=name, role="agent", index=0, seed=seed,
                            argv=(sys.executable, "-m", "tests.unit.zygote_probe", str(code)),
                            env={"PROBE_VALUE": name}, node_dir=run_dir, log_path=log, metrics_path=log)
        with open(log, "ab") as log_file:
            process = launcher.start(launch, {}, log_file)
        results[name] = {"code": process.wait(timeout=30), "pid": process.pid}
    launcher.close()
    print(json.dumps({"me": os.getpid(), "results": results, "zygote_code": launcher.process.returncode}))
    """
)


def last_json_line_of(script: str, *args: str, timeout_s: float = 60) -> dict:
    """Run `script` in a fresh interpreter (it may fork or make itself a subreaper, which a pytest
    process should not) and return what its last line of output says."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_forked_nodes_are_our_children_reseeded_with_their_own_exit_codes(tmp_path):
    report = last_json_line_of(DRIVER, str(tmp_path), timeout_s=120)
    seen = {name: json.loads((tmp_path / f"{name}.log").read_text().strip().splitlines()[-1]) for name in "abc"}
    assert {name: r["code"] for name, r in report["results"].items()} == {"a": 0, "b": 3, "c": 0}
    for name, probe in seen.items():
        assert probe["ppid"] == report["me"], "re-parented to the launcher's process (subreaper)"
        assert probe["pgid_is_pid"], "its own session and process group"
        assert probe["comm"] == f"parley:{name}"
        assert probe["env"] == name and probe["name"] == "__main__"
    # Same seed, same draws; another seed, other draws (not the zygote's copied state).
    assert (seen["a"]["random"], seen["a"]["numpy"]) == (seen["c"]["random"], seen["c"]["numpy"])
    assert seen["a"]["random"] != seen["b"]["random"] and seen["a"]["numpy"] != seen["b"]["numpy"]
    assert report["zygote_code"] == 0, "the zygote exits when its socket closes"


def test_the_orchestrator_pid_variable_is_the_one_nodes_watch() -> None:
    from orchestrator.launcher import ORCHESTRATOR_PID_ENV as launcher_name
    from protocols.run.control import ORCHESTRATOR_PID_ENV as control_name

    assert launcher_name == control_name


# The intermediate process exits late (a loaded machine): the node must still start as the
# subreaper's child, else it decides it has no orchestrator to watch (protocols/run/control.py).
LATE_INTERMEDIATE = textwrap.dedent(
    """
    import ctypes, json, os, time
    from orchestrator.launcher import PR_SET_CHILD_SUBREAPER
    from orchestrator.zygote import wait_to_be_adopted

    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    read_fd, write_fd = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        intermediate_pid = os.getpid()
        if os.fork() == 0:  # the node
            started = time.monotonic()
            first_parent = os.getppid()
            wait_to_be_adopted(away_from=intermediate_pid)
            os.write(write_fd, json.dumps({"first_parent": first_parent, "parent": os.getppid(),
                                           "intermediate": intermediate_pid,
                                           "waited_s": time.monotonic() - started}).encode())
            os._exit(0)
        time.sleep(0.5)
        os._exit(0)
    os.close(write_fd)
    os.waitpid(intermediate, 0)
    with os.fdopen(read_fd) as pipe:
        seen = json.loads(pipe.read())
    os.wait()  # the node, now ours
    print(json.dumps({"me": os.getpid(), **seen}))
    """
)


def test_a_node_starts_only_once_the_orchestrator_has_adopted_it():
    seen = last_json_line_of(LATE_INTERMEDIATE)
    assert seen["first_parent"] == seen["intermediate"], "the node began under the intermediate (the race set up)"
    assert seen["parent"] == seen["me"], "it went on only once re-parented to the subreaper"
    assert seen["waited_s"] >= 0.3


# A torch build whose warm-up starts a thread (a CUDA build on a GPU machine does: the driver's
# thread and an autograd device thread), played by a warm-up that starts one.
THREADED_WARM_UP = textwrap.dedent(
    """
    import json, sys, threading, time, types
    from orchestrator import zygote

    torch = types.ModuleType("torch")  # a CUDA build, as far as the zygote asks
    torch.version = types.SimpleNamespace(cuda="13.0", hip=None)
    sys.modules["torch"] = torch
    def warm_up_that_starts_a_thread():
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    zygote.warm_up_torch = warm_up_that_starts_a_thread
    skipped = zygote.warm_up_torch_if_fork_safe()
    print(json.dumps({"skipped": skipped, "threads_after": zygote.thread_count()}))
    """
)


def test_a_warm_up_that_would_start_threads_is_skipped_and_the_zygote_stays_forkable():
    seen = last_json_line_of(THREADED_WARM_UP)
    assert seen["skipped"] is not None and seen["skipped"].startswith("it starts 1 thread(s) besides the main one"), seen
    assert "forking would be unsafe" in seen["skipped"]
    assert seen["threads_after"] == 1, "the thread started only in the throwaway probe"


def test_a_cpu_build_of_torch_warms_up_in_the_zygote_itself_with_no_probe(monkeypatch):
    from orchestrator import zygote

    ran_in = []
    cpu_build = types.ModuleType("torch")
    cpu_build.version = types.SimpleNamespace(cuda=None, hip=None)
    monkeypatch.setitem(sys.modules, "torch", cpu_build)
    monkeypatch.setattr(zygote, "warm_up_torch", lambda: ran_in.append(os.getpid()))
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("a CPU build needs no probe process"))
    assert zygote.warm_up_torch_if_fork_safe() is None
    assert ran_in == [os.getpid()]


def test_preloaded_modules_warm_up_and_a_failing_warm_up_is_reported_not_fatal(monkeypatch):
    from orchestrator import zygote

    called = []
    ready = types.ModuleType("ready_module")
    ready.warm_up = lambda: called.append("ready")
    broken = types.ModuleType("broken_module")
    broken.warm_up = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "ready_module", ready)
    monkeypatch.setitem(sys.modules, "broken_module", broken)
    failed = zygote.warm_up_modules(["numpy", "ready_module", "broken_module"])
    assert called == ["ready"]
    assert failed == {"<broken_module.warm_up>": "ZeroDivisionError: division by zero"}


COMPILED_STEP_WARM_UP = textwrap.dedent(
    """
    import json, os
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # as the zygote starts
    from orchestrator import zygote
    loaded, failed = zygote.preload(["agent_node.algos.numpy_steps"])
    failed.update(zygote.warm_up_modules(loaded))
    print(json.dumps({"failed": failed, "threads_after": zygote.thread_count()}))
    """
)


def test_the_compiled_dqn_step_loads_in_the_zygote_and_leaves_it_forkable():
    from orchestrator.launcher import preload_modules

    assert "agent_node.algos.numpy_steps" in preload_modules({"agent"}, "dqn", None, compiled_updates=True)
    assert "agent_node.algos.numpy_steps" not in preload_modules({"agent"}, "dqn", None)
    seen = last_json_line_of(COMPILED_STEP_WARM_UP, timeout_s=120)
    assert seen == {"failed": {}, "threads_after": 1}
