"""TensorBoard gets every run's settings beside its results (`tb/hparams/`), read back from the
event file as TensorBoard would."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import yaml
from tensorboardX.proto import event_pb2

from orchestrator.report import run_hparams, write_tensorboard_hparams

ROOT = Path(__file__).resolve().parents[2]


def read_events(directory: Path) -> list[event_pb2.Event]:
    """The records of every TFRecord event file in `directory`, as TensorBoard reads them: length
    (8 bytes), its CRC (4), data, data CRC (4). tensorboardX's `add_hparams` opens a second
    writer, whose file has a name of its own when the clock's second turned in between."""
    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12 : at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    assert events, f"no event file in {directory}"
    return events


def test_the_hparams_are_the_scalar_settings_a_user_compares_runs_by() -> None:
    resolved = yaml.safe_load((ROOT / "configs" / "4agents_ring.yaml").read_text())
    hparams = run_hparams(resolved)
    assert hparams["run.seed"] == 0 and hparams["env.name"] == "mpe2.simple_spread_v3"
    assert hparams["agents.learner.kind"] == "dqn" and hparams["agents.learner.gamma"] == 0.95
    assert hparams["agents.landmarks.assignment"] == "negotiated"
    assert hparams["protocols.consensus.rounds"] == 2 and hparams["protocols.consensus.compression"] == "int8"
    assert hparams["topology.kind"] == "ring"
    assert "agents.learner.hidden_sizes" not in hparams  # a list: TensorBoard takes scalars only
    assert all(isinstance(value, (bool, int, float, str)) for value in hparams.values())


def test_the_run_writes_its_settings_and_headline_results_for_tensorboard(tmp_path: Path) -> None:
    (tmp_path / "resolved.yaml").write_text((ROOT / "configs" / "4agents_ring.yaml").read_text())
    summary = {"headline": {"eval_return_last5": -14.06, "eval_gap_closed": 0.81, "consensus_sessions": None,
                            "faults": 0.0, "restarts": float("nan")}}
    directory = write_tensorboard_hparams(summary, tmp_path)
    tags = {value.tag: value for event in read_events(directory) for value in event.summary.value}
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(tags)
    assert b"agents.landmarks.assignment" in tags["_hparams_/session_start_info"].metadata.plugin_data.content
    results = {tag: value.simple_value for tag, value in tags.items() if tag.startswith("result/")}
    # None and NaN are left out; every number is there.
    assert results.keys() == {"result/eval_return_last5", "result/eval_gap_closed", "result/faults"}
    assert abs(results["result/eval_return_last5"] + 14.06) < 1e-5


def test_writing_the_hparams_does_not_load_torch_into_the_orchestrator(tmp_path: Path) -> None:
    """The orchestrator never loads torch; tensorboardX would, at import, for the hparams alone
    (seconds at the end of every run). In a fresh process, as `orchestrate up` is: the file is
    written, torch stays unloaded, and importing it afterwards still works."""
    (tmp_path / "resolved.yaml").write_text((ROOT / "configs" / "4agents_ring.yaml").read_text())
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestrator.report import write_tensorboard_hparams\n"
        f"directory = write_tensorboard_hparams({{'headline': {{'eval_return_last5': -14.0}}}}, Path({str(tmp_path)!r}))\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
        "import torch\n"
        "print('torch imports afterwards')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["torch not loaded", "torch imports afterwards"]
    tags = {value.tag for event in read_events(tmp_path / "tb" / "hparams") for value in event.summary.value}
    assert "result/eval_return_last5" in tags
