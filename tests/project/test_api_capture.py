"""The capture tool that shows a change of structure changes no output: its normalisation is
stable where runs differ, and its diff finds a real change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("api_capture", ROOT / "scripts" / "api_capture.py")
api_capture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_capture)

KERNEL = "0b6c4a5e-2f3d-4c1b-9a8e-7d6f5e4c3b2a"
OTHER = "9f8e7d6c-5b4a-4392-8170-6e5d4c3b2a19"


def run(kernel: str, pid: int, started: float, memory: int) -> dict:
    """What two runs of the same server would answer: different ids, PIDs and times."""
    return {
        "kernels": [{"id": kernel, "pid": pid, "started": started, "gpu_memory": memory}],
        "decision": f"Kernel {kernel} held 5 GiB",
        "stamp": "2026-12-06T17:00:00.123+00:00",
    }


def test_what_differs_between_runs_is_replaced_by_the_same_placeholders():
    """Ids, PIDs, times and ISO stamps become labels numbered by first appearance."""
    first = api_capture.Normalizer()(run(KERNEL, 4242, 1.5, 2**30))
    second = api_capture.Normalizer()(run(OTHER, 777, 9.25, 2**30))
    assert first == second
    assert first["kernels"][0]["id"] == "<id-1>" and first["decision"] == "Kernel <id-1> held 5 GiB"


def test_a_change_of_output_is_found(tmp_path, capsys):
    """The same run twice is the same; a figure that changed is a diff, and exit status 1."""
    normalize = api_capture.Normalizer
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(normalize()(run(KERNEL, 1, 1.0, 2**30))))
    b.write_text(json.dumps(normalize()(run(OTHER, 2, 2.0, 2**30))))
    c.write_text(json.dumps(normalize()(run(OTHER, 2, 2.0, 2**31))))
    assert api_capture.diff(a, b) == 0
    assert api_capture.diff(a, c) == 1
    assert "2147483648" in capsys.readouterr().out
