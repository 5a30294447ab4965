"""Capture what the server answers, so a change of structure can be shown to change no output.

    python scripts/api_capture.py OUT.json          # capture
    python scripts/api_capture.py --diff A.json B.json

It runs a real server on the fake NVML of the benchmarks (``benchmarks/serve_fake.py``, 8 GPUs,
no latency), stores two notebook policies, opens three notebooks (one with a memory limit on
GPU 0, one placed with ``devices: "auto"``, one without a policy), asks the kernel channel from
inside a kernel, has the fake GPUs list two kernels' processes, then records every REST route, the first stream message and the ``tfgpu_``
series of ``/metrics``. What differs from run to run (times, kernel ids, PIDs, the sampler's own
timings, the kernels' real memory) is replaced by stable placeholders, so two captures of the
same code are equal, and a diff of two captures is a change of output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._harness import FakeServer, call, execute, start_session  # noqa: E402

SETTINGS = [
    '--TFGPU.default_policy={"memory_growth": true}',
    "--TFGPU.max_memory_mb=20480",
    "--TFGPU.enforcement=warn",
    "--TFGPU.sample_interval=0.5",
    "--TFGPU.process_interval=0.5",
]
POLICIES = {
    "capped.ipynb": {"memory_limit_mb": 4096, "devices": [0]},
    "placed.ipynb": {"devices": "auto", "gpu_count": 1},
}
NOTEBOOKS = ["capped.ipynb", "placed.ipynb", "plain.ipynb"]
KERNEL_CHANNEL = """
import json, os, urllib.request
def get(route):
    request = urllib.request.Request(os.environ["TFGPU_SERVER_URL"] + "tfgpu/api/kernel/" + route,
        headers={"Authorization": "tfgpu-kernel " + os.environ["TFGPU_KERNEL_TOKEN"]})
    return json.loads(urllib.request.urlopen(request).read())
print(json.dumps({"policy": get("policy"), "status": get("status")}))
"""
# Keys whose values are moments or durations that differ from run to run.
MOMENTS = re.compile(
    r"^(timestamp|time|started|received|last_activity|applied_in_process|taken|retry_in|"
    r"read_at|idle_seconds|seconds|at|when|since|measured_at|mtime|epoch)$"
)
# Keys whose values are the sampler's measurements of itself.
MEASURED = re.compile(
    r"^(cost_ms|measured_ms|backend_time_fraction|rounds|calls|history_bytes|interval|"
    r"stretched|over_budget|stretch_reason|pcie_watched)$"
)
UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
IDS = re.compile(f"^{UUID_TEXT}$")


class Normalizer:
    """Stable placeholders for what differs between runs, numbered by first appearance."""

    def __init__(self) -> None:
        self.names: dict[Any, str] = {}

    def label(self, kind: str, value: Any) -> str:
        """``kernel-1``, ``pid-2``...: the same value always gets the same label."""
        key = (kind, value)
        if key not in self.names:
            count = sum(1 for k in self.names if k[0] == kind) + 1
            self.names[key] = f"<{kind}-{count}>"
        return self.names[key]

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            if key == "pids":
                return [self.label("pid", v) for v in value]
            return [self(v, key) for v in value]
        if value is None or isinstance(value, bool):
            return value
        if MOMENTS.match(key) or MEASURED.match(key):
            return f"<{type(value).__name__}>"
        if key in ("pid",) and isinstance(value, int):
            return self.label("pid", value)
        if isinstance(value, str):
            value = IDS.sub(lambda m: self.label("id", m[0]), value)
            for uuid in re.findall(UUID_TEXT, value):
                value = value.replace(uuid, self.label("id", uuid))
            value = re.sub(r"/tmp/tfgpu-bench-[^/]+", "<run folder>", value)
            return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(?:\+00:00|Z)?", "<iso-time>", value)
        return value


async def first_stream_message(server: FakeServer) -> dict[str, Any]:
    """The first message the stream sends a new client."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(server.ws_url + "tfgpu/api/stream", headers=server.headers)
    ws = await websocket_connect(request)
    try:
        return json.loads(await asyncio.wait_for(ws.read_message(), 30))
    finally:
        ws.close()


def metrics(server: FakeServer) -> list[str]:
    """The tfgpu_ series of /metrics: names and labels, values kept only where they are fixed."""
    _, body, _ = server.request("metrics")
    lines = []
    for line in body.decode().splitlines():
        if not line.startswith(("tfgpu_", "# HELP tfgpu_", "# TYPE tfgpu_")):
            continue
        if line.startswith("#"):
            lines.append(line)
            continue
        series, _, value = line.rpartition(" ")
        volatile = re.search(r"kernel|seconds|usage|sampler|byte_seconds|busy", series)
        lines.append(f"{series} {'<value>' if volatile else value}")
    return sorted(lines)


def capture() -> dict[str, Any]:
    """Everything the server answers, in one document."""
    with FakeServer(latency=False, extra=SETTINGS) as server:
        for notebook, policy in POLICIES.items():
            call(server, "PUT", f"tfgpu/api/policies/{notebook}", policy)
        kernels = {name: start_session(server, name)["kernel"]["id"] for name in NOTEBOOKS}
        inside = json.loads(execute(server, kernels["capped.ipynb"], KERNEL_CHANNEL).strip())
        # The fake GPUs list two of the kernels' processes, so attribution and the kernels'
        # memory are in the capture: the capped one on GPU 0 (over its cap), the other on GPU 5.
        held = {"capped.ipynb": (0, 5 * 2**30), "placed.ipynb": (5, 2**30)}
        for name, (gpu, used) in held.items():
            _, view, _ = call(server, "GET", f"tfgpu/api/kernels/{kernels[name]}")
            process = {"pid": view["pid"], "gpu": gpu, "used_memory": used}
            call(server, "POST", "bench/processes", {"add": [process]})
        time.sleep(3)  # a few sampling rounds (and process lists) with the kernels attributed
        got: dict[str, Any] = {"kernel channel (capped.ipynb)": inside}
        for route in [
            "status", "gpus", "kernels", "policies", "policies/capped.ipynb", "config",
            "enforcement",
        ]:  # fmt: skip
            status, body, _ = call(server, "GET", f"tfgpu/api/{route}")
            got[f"GET {route}"] = {"status": status, "body": body}
        for name, kernel_id in kernels.items():
            status, body, _ = call(server, "GET", f"tfgpu/api/kernels/{kernel_id}")
            got[f"GET kernels/{{{name}}}"] = {"status": status, "body": body}
        status, body, _ = call(server, "GET", "tfgpu/api/gpus/history?seconds=2")
        got["GET gpus/history (keys)"] = {"status": status, "keys": sorted(body or {})}
        got["stream (first message)"] = asyncio.run(first_stream_message(server))
        got["metrics (tfgpu_ series)"] = metrics(server)
        # The kernels' rows in any order the server lists them: sorted by notebook.
        for key in ("GET kernels",):
            rows = got[key]["body"]["kernels"]
            rows.sort(key=lambda row: row.get("notebook") or "")
        stream_kernels = got["stream (first message)"].get("kernels") or []
        stream_kernels.sort(key=lambda row: row.get("notebook") or "")
    normalize = Normalizer()
    # Label the kernels in notebook order, so every run numbers them alike.
    for name in NOTEBOOKS:
        normalize.label("id", kernels[name])
    captured = normalize(got)
    key = "metrics (tfgpu_ series)"
    captured[key] = sorted(captured[key])  # in the order of the labels, not of the kernel ids
    return captured


def diff(a: Path, b: Path) -> int:
    """Print where two captures differ; exit status 1 if they do."""
    import difflib

    left = json.dumps(json.loads(a.read_text()), indent=1, sort_keys=True).splitlines()
    right = json.dumps(json.loads(b.read_text()), indent=1, sort_keys=True).splitlines()
    lines = list(difflib.unified_diff(left, right, str(a), str(b), lineterm="", n=2))
    print("\n".join(lines) if lines else "the captures are the same")
    return 1 if lines else 0


def main() -> int:
    """Capture, or compare two captures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="where to write the capture")
    parser.add_argument("--diff", nargs=2, metavar="CAPTURE", help="compare two captures")
    args = parser.parse_args()
    if args.diff:
        return diff(Path(args.diff[0]), Path(args.diff[1]))
    if not args.out:
        parser.error("name the file to write, or --diff A B")
    Path(args.out).write_text(json.dumps(capture(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
