"""Unpacking a node's shipped files on the machine it runs on (the ssh and ray backends).

A node on another machine gets a tar of its resolved.yaml and its keys (`ssh.shipped_files`).
Several nodes of a run may share a machine and so one run directory there: each node's files
are unpacked into it while the nodes started before read theirs. Writing a file in place
(`tarfile.extractall`, or `tar -x`, which unlinks and rewrites) lets such a node read it empty or
half written (a Ray run across namespaces once read an empty resolved.yaml). So every file is
written beside its place and renamed over it (`protocols.files.atomic_write`): a reader
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

from protocols.files import atomic_write


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
