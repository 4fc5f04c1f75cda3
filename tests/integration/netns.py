"""Several "hosts" on one machine: Linux network namespaces joined by a bridge, with sshd.

`NamespaceCluster` makes, for one test:
- a bridge namespace holding `br0`, and one namespace per host, each joined to the bridge by a
  veth pair and given its own address in 10.200.0.0/24 (host i is 10.200.0.(10+i));
- an sshd inside each host namespace that asked for one (Debian's openssh-server), with a host
  key and a client key made for the test, and a known_hosts file naming those host keys.

Traffic stays inside namespaces the test made: the root namespace has no link to the bridge.
Everything is torn down in `close()` (processes left in a namespace are killed first, then the
namespaces are deleted, which deletes their veths and the bridge), also when the test failed.
`unavailable_reason()` says why a machine cannot run these tests, for a skip message.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.200.0"


def _ip(*args: str, namespace: str | None = None) -> None:
    argv = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode().strip()}")


def unavailable_reason() -> str | None:
    """None when namespaces, veths and sshd can be used here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing: apt-get install openssh-server"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the ssh client is missing: apt-get install openssh-client"
    probe = f"parleyprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError) as error:
        return f"cannot create a network namespace here: {error}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass
class Host:
    name: str  # e.g. "h1"
    namespace: str
    address: str
    host_veth: str  # the end inside the host's namespace
    bridge_veth: str  # the end on the bridge: taking it down cuts the host off
    sshd: subprocess.Popen | None = None


@dataclass
class NamespaceCluster:
    directory: Path
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    prefix: str = "parley"  # namespaces are named <prefix>-<token>-<host>, so their maker is known
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge_namespace: str = ""
    client_key: Path | None = None
    known_hosts: Path | None = None

    def __post_init__(self) -> None:
        self.bridge_namespace = f"{self.prefix}-{self.token}-br"

    # ------------------------------------------------------------------ building

    def build(self, host_names: list[str], sshd_on: list[str]) -> None:
        _ip("netns", "add", self.bridge_namespace)
        _ip("link", "set", "lo", "up", namespace=self.bridge_namespace)
        _ip("link", "add", "br0", "type", "bridge", namespace=self.bridge_namespace)
        _ip("link", "set", "br0", "up", namespace=self.bridge_namespace)
        for position, name in enumerate(host_names):
            host = Host(
                name=name,
                namespace=f"{self.prefix}-{self.token}-{name}",
                address=f"{SUBNET_PREFIX}.{10 + position}",
                host_veth=f"pv{self.token}{position}h",  # at most 15 characters
                bridge_veth=f"pv{self.token}{position}b",
            )
            self.hosts[name] = host
            _ip("netns", "add", host.namespace)
            _ip("link", "set", "lo", "up", namespace=host.namespace)
            _ip("link", "add", host.host_veth, "type", "veth", "peer", "name", host.bridge_veth)
            _ip("link", "set", host.host_veth, "netns", host.namespace)
            _ip("link", "set", host.bridge_veth, "netns", self.bridge_namespace)
            _ip("link", "set", host.bridge_veth, "master", "br0", namespace=self.bridge_namespace)
            _ip("link", "set", host.bridge_veth, "up", namespace=self.bridge_namespace)
            _ip("addr", "add", f"{host.address}/24", "dev", host.host_veth, namespace=host.namespace)
            _ip("link", "set", host.host_veth, "up", namespace=host.namespace)
        if sshd_on:
            self._make_keys()
            for name in sshd_on:
                self._start_sshd(self.hosts[name])

    def _make_keys(self) -> None:
        self.client_key = self.directory / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True, timeout=30)
        (self.directory / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = self.directory / "known_hosts"
        self.known_hosts.write_text("")

    def _start_sshd(self, host: Host) -> None:
        key = self.directory / f"host_key_{host.name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
        with self.known_hosts.open("a") as known:
            known.write(f"{host.address} {Path(f'{key}.pub').read_text().split(' ', 2)[0]} "
                        f"{Path(f'{key}.pub').read_text().split(' ', 2)[1]}\n")
        config = self.directory / f"sshd_config_{host.name}"
        config.write_text(
            "\n".join([
                f"ListenAddress {host.address}",
                "Port 22",
                f"HostKey {key}",
                f"PidFile {self.directory}/sshd_{host.name}.pid",
                f"AuthorizedKeysFile {self.directory}/authorized_keys",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "X11Forwarding no",
                "",
            ])
        )  # fmt: skip
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.directory / f"sshd_{host.name}.log").open("ab"),
        )  # fmt: skip

    def wait_for_ssh(self, from_host: str, to_host: str, timeout_s: float = 30.0) -> None:
        """Readiness: retry a real login from `from_host` until it succeeds or the deadline passes."""
        target = self.hosts[to_host]
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            done = self.exec(from_host, [*self.ssh_argv(target.address), "true"], timeout=30)
            if done.returncode == 0:
                return
            last = done.stderr.decode(errors="replace")
            assert target.sshd is not None and target.sshd.poll() is None, (
                f"sshd on {to_host} exited: {(self.directory / f'sshd_{to_host}.log').read_text()[-2000:]}"
            )
            time.sleep(0.2)
        raise AssertionError(f"no ssh login {from_host} -> {to_host} within {timeout_s} s: {last}")

    def ssh_argv(self, address: str) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-i", str(self.client_key), f"root@{address}"]  # fmt: skip

    def exec(self, host: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.hosts[host].namespace, *argv], capture_output=True, timeout=timeout)

    def popen(self, host: str, argv: list[str], **popen_args) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[host].namespace, *argv], **popen_args)

    # ------------------------------------------------------------------ faults

    def cut(self, host: str) -> None:
        """Partition `host` from all others: its bridge port goes down."""
        _ip("link", "set", self.hosts[host].bridge_veth, "down", namespace=self.bridge_namespace)

    def heal(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].bridge_veth, "up", namespace=self.bridge_namespace)

    def kill_everything(self, host: str) -> list[int]:
        """A lost machine: SIGKILL every process in `host`'s namespace, its sshd included, and
        return their pids. Its network stays up: connections to it are refused, as from a
        machine whose processes are all gone (a cut-off one is `cut`)."""
        killed = self._kill_namespace(self.hosts[host].namespace)
        sshd = self.hosts[host].sshd
        if sshd is not None:
            sshd.wait(timeout=10)  # our child: reaped here, so close() does not signal it again
        return killed

    @staticmethod
    def _kill_namespace(namespace: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, timeout=30)
        killed = []
        for pid in listed.stdout.decode().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except ProcessLookupError:
                pass
        return killed

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for host in self.hosts.values():
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.terminate()
                try:
                    host.sshd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    host.sshd.kill()
                    host.sshd.wait()
        namespaces = [host.namespace for host in self.hosts.values()] + [self.bridge_namespace]
        for namespace in namespaces:
            # Processes still inside (a node whose ssh session died) would keep the namespace alive.
            self._kill_namespace(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
