"""A node's files for the machine it runs on (the ssh and ray backends): packed here, unpacked there.

A node on another machine gets a tar of its resolved.yaml and its keys (`shipped_files`).
Several nodes of a run may share a machine and so one run directory there: each node's files
are unpacked into it while the nodes started before read theirs. Writing a file in place
(`tarfile.extractall`, or `tar -x`, which unlinks and rewrites) lets such a node read it empty or
half written (a Ray run across namespaces once read an empty resolved.yaml). So every file is
written beside its place and renamed over it (`protocols.storage.files.atomic_write`): a reader
sees the old file or the new one, never a part.

The ray backend calls `extract_replacing` in its runner; the ssh backend runs this module on the
host, the tar on its stdin:

    python -m orchestrator.backends.shipping RUN_DIR < node-files.tar
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import yaml

from protocols.net.auth import KEYS_DIRNAME, NODE_KEYS_DIRNAME, PUBLIC_KEYS_FILENAME, RUN_KEYS_FILENAME
from protocols.storage.files import atomic_write
from protocols.run.settings import RunLayout


def shipped_config(local_run_dir: Path, remote_run_dir: str) -> bytes:
    """resolved.yaml as a node on another machine reads it: `runtime.run_dir` (and `keys_dir`)
    rewritten to that machine's copy of the run dir."""
    data = yaml.safe_load((local_run_dir / "resolved.yaml").read_text())
    data["runtime"]["run_dir"] = remote_run_dir
    if data["runtime"].get("keys_dir"):
        data["runtime"]["keys_dir"] = f"{remote_run_dir}/{KEYS_DIRNAME}"
    return yaml.safe_dump(data, sort_keys=False).encode()


def shipped_files(runtime: RunLayout, remote_run_dir: str, node_id: str) -> bytes:
    """A tar of what `node_id` needs on another machine: its resolved.yaml and, with
    authentication on, the run's key files and its own key (never another node's secret key)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name: str, content: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o600
            tar.addfile(info, io.BytesIO(content))

        add("resolved.yaml", shipped_config(Path(runtime.run_dir), remote_run_dir))
        keys_dir = runtime.keys_dir
        if keys_dir:
            for relative in (RUN_KEYS_FILENAME, PUBLIC_KEYS_FILENAME, f"{NODE_KEYS_DIRNAME}/{node_id}.json"):
                add(f"{KEYS_DIRNAME}/{relative}", (Path(keys_dir) / relative).read_bytes())
    return buffer.getvalue()


def extract_replacing(tar: tarfile.TarFile, directory: Path) -> None:
    """Unpack `tar` into `directory`, each file renamed over its place (module docstring), after
    the checks `filter="data"` makes; anything but files and folders is refused."""
    for member in tar.getmembers():
        member = tarfile.data_filter(member, str(directory))
        target = directory / member.name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if not member.isfile():
            raise ValueError(f"a shipped archive holds files and folders only, got {member.name!r} of type {member.type!r}")
        with tar.extractfile(member) as source:
            atomic_write(target, lambda file: file.write(source.read()))  # 0600 under umask 077


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m orchestrator.backends.shipping RUN_DIR < files.tar", file=sys.stderr)
        return 2
    os.umask(0o077)
    directory = Path(args[0])
    directory.mkdir(parents=True, exist_ok=True)
    # The archive is a node's config and keys (kilobytes): read whole, then unpacked file by file.
    with tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read())) as tar:
        extract_replacing(tar, directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
