"""Launch backends: how the orchestrator starts a node, and where.

The interface is deliberately small, so the local launcher (today `LocalBackend` in
`orchestrator/runtime.py`; soon a fork from a zygote) and the remote ones share it:

    start(node)            start `node.launch` (a `plan.NodeLaunch`); set `node.process` to a
                           handle with `pid`, `poll()`, `wait()` (subprocess.Popen's meaning) and
                           `node.log_file` to the open local log the node's output goes to;
    signal(node, signum)   deliver a signal to the node process itself, wherever it runs;

and, for backends whose nodes run elsewhere (optional; the runtime checks with hasattr):

    advertised_host(node_id)  the address peers reach that node at: the orchestrator puts it in
                              place of the host the node bound (e.g. 0.0.0.0) in its endpoints;
    finish(node)              after the node exited: bring its files back into the local run dir.

`launch.backend` picks one: `local` (runtime.LocalBackend), `ssh` (`backends/ssh.py`) or `ray`
(`backends/ray.py`).
"""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (e.g. its optional extra is not installed); the message
    says what to install. The CLI prints it as one line."""



class DeadOnArrival:
    """The handle of a node that could not be started where it had to run (its host unreachable,
    its machine lost with nowhere to go): already exited with 255, the code of a lost host."""

    pid = -1
    returncode = 255

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode
