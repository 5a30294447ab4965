"""Run a real jupyter_server with jupyter-tfgpu on a fake NVML of 8 GPUs, for the benchmarks.

The fake `pynvml` (tests/fake_pynvml.py) goes into ``sys.modules`` before the server starts, with
the per-call latencies of the product spec, so the NVML backend runs unchanged. Only this launcher
adds endpoints that the benchmark scripts use from outside (token required):

    GET {base_url}bench/nvml      {"calls": total, "call_time": seconds, "by_function": {...},
                                   "monotonic": server clock, "pid": server PID}
    GET {base_url}bench/requests  server-side request times per path since the last
                                  ``?reset=1``: {path: {"count", "p50_ms", "p99_ms", "max_ms"}}
    GET/POST {base_url}bench/faults   NVML faults in the running server: POST
                                  {"inject": [{"name", "error", "times", "gpu", "delay"}]} or
                                  {"clear": true}; both answer {"faults_raised", "active"}
    GET {base_url}bench/kernel-state  kernel ids the extension keeps something for, per place
    GET/POST {base_url}bench/processes  the fake's GPU processes: POST {"add": [{"pid", "gpu",
                                  "mig", "used_memory"}], "remove": [pid, ...]}; both answer
                                  {"processes": [...]}
    GET {base_url}bench/stream    the stream's open clients, as the server counts them:
                                  {"clients", "pending_bytes", "outputs": [{"in_flight",
                                  "pending_bytes", "sent", "skipped", "closed_because"}]}

Usage (from the repo root):
    python benchmarks/serve_fake.py [--no-latency] [--port N] [--token T] [--ready-file F]
                                    [--max-seconds S] [--gpus N] [--mig N]
                                    [--foreign-processes N] [--checkout DIR]
                                    [--start-faults JSON] [--quick]
                                    [-- extra ServerApp/TFGPU args]
``--quick`` starts the server, reads its own endpoints once, prints a JSON result and exits.
``--start-faults`` injects NVML faults before the server starts, so its first open meets them.
The fake GPUs are made in ``fake_gpus.py``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gpus import (  # noqa: E402
    GPU_COUNT,
    MIG_GPU_NAME,
    MIG_PROFILE,
    add_processes,
    inject_faults,
    list_processes,
    make_fake,
    remove_processes,
)

# Server-side request times kept for /bench/requests (bounded).
REQUEST_LOG_SIZE = 200_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options; anything after ``--`` (or unknown) goes to the ServerApp."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-latency", action="store_true", help="fake NVML calls return at once")
    parser.add_argument("--gpus", type=int, default=GPU_COUNT, help="number of fake GPUs")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", default="", help="server token (default: a random one)")
    parser.add_argument("--base-url", default="/", help="ServerApp.base_url")
    parser.add_argument("--ready-file", default="", help="write {url, token, pid} here when serving")
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="stop the server after this long"
    )
    parser.add_argument(
        "--mig", type=int, default=0,
        help=f"MIG slices per GPU ({MIG_GPU_NAME} boards, {MIG_PROFILE} slices); 0: no MIG",
    )  # fmt: skip
    parser.add_argument(
        "--foreign-processes", type=int, default=None,
        help="GPU processes of no kernel (PIDs no process can have), spread over the GPUs and "
        "their MIG slices; default: one per GPU",
    )  # fmt: skip
    parser.add_argument(
        "--checkout", default="",
        help="import jupyter_tfgpu from this checkout (e.g. a git worktree of another commit), "
        "in the server and in its kernels, instead of the one installed",
    )  # fmt: skip
    parser.add_argument(
        "--start-faults", default="",
        help='NVML faults in force from the start, as POST bench/faults\'s "inject" list (JSON), '
        'e.g. \'[{"name": "nvmlDeviceGetMemoryInfo", "error": "TIMEOUT", "gpu": 3}]\'',
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: start, self-check, exit")
    return parser.parse_known_args(argv)


def throwaway_dirs() -> Path:
    """HOME and every Jupyter dir in a fresh temp dir, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="tfgpu-bench-"))
    atexit.register(shutil.rmtree, root, True)
    for name, sub in (
        ("HOME", "home"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
    ):
        (root / sub).mkdir()
        os.environ[name] = str(root / sub)
    (root / "notebooks").mkdir()
    # Enable the extension through config, as the auto-enable file of an install does.
    (root / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_tfgpu": True}}})
    )
    return root


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main(argv: list[str] | None = None) -> int:
    """Install the fake NVML, then run jupyter_server with the extension until stopped."""
    args, server_args = parse_args(sys.argv[1:] if argv is None else argv)
    server_args = [a for a in server_args if a != "--"]
    root = throwaway_dirs()
    fake = make_fake(
        latency=not args.no_latency, gpus=args.gpus, mig=args.mig, foreign=args.foreign_processes
    )
    inject_faults(fake, json.loads(args.start_faults) if args.start_faults else [])
    sys.modules["pynvml"] = fake.module  # before the extension's backend imports it
    if args.checkout:
        # First on the path, after the fake was imported from this repo; kernels inherit it.
        checkout = str(Path(args.checkout).resolve())
        sys.path.insert(0, checkout)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (checkout, os.environ.get("PYTHONPATH", "")) if p
        )

    # Imported only now, so jupyter_core reads the throw-away dirs.
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.serverapp import ServerApp
    from jupyter_server.utils import url_path_join
    from tornado import ioloop, web

    request_log: deque[tuple[str, float]] = deque(maxlen=REQUEST_LOG_SIZE)

    class NvmlCountersHandler(APIHandler):
        """GET bench/nvml: the fake NVML's call counters (benchmark-only)."""

        @web.authenticated
        def get(self) -> None:
            """Totals since the server started; callers take differences."""
            calls = dict(fake.calls)  # one C-level copy: consistent under the GIL
            self.finish(
                json.dumps(
                    {
                        "calls": sum(calls.values()),
                        "call_time": fake.call_time,
                        "by_function": calls,
                        "monotonic": time.monotonic(),
                        "pid": os.getpid(),
                    }
                )
            )

    class RequestTimesHandler(APIHandler):
        """GET bench/requests: server-side request times per path (benchmark-only)."""

        @web.authenticated
        def get(self) -> None:
            """Summary since the last reset; ``?reset=1`` clears after answering."""
            by_path: dict[str, list[float]] = {}
            for path, seconds in list(request_log):
                by_path.setdefault(path, []).append(seconds * 1000)
            if self.get_query_argument("reset", "0") == "1":
                request_log.clear()
            self.finish(
                json.dumps(
                    {
                        path: {
                            "count": len(times),
                            "p50_ms": percentile(times, 50),
                            "p99_ms": percentile(times, 99),
                            "max_ms": max(times),
                        }
                        for path, times in by_path.items()
                    }
                )
            )

    def fault_state() -> dict:
        """The fake's fault counters: total raised, and per active fault."""
        active = dict(fake.faults)  # one C-level copy: consistent under the GIL
        return {
            "faults_raised": fake.faults_raised,
            "active": {name: {"raised": f.raised, "gpu": f.gpu} for name, f in active.items()},
        }

    class NvmlFaultsHandler(APIHandler):
        """GET/POST bench/faults: inject NVML faults into the running server (benchmark-only)."""

        @web.authenticated
        def get(self) -> None:
            """Faults raised so far and the active ones."""
            self.finish(json.dumps(fault_state()))

        @web.authenticated
        def post(self) -> None:
            """``{"clear": true}`` removes every fault; ``{"inject": [...]}`` adds faults, each
            ``{"name", "error": "TIMEOUT" (an NVML_ERROR_ suffix) or a code, "times", "gpu",
            "delay"}`` as ``FakeNvml.inject`` takes them."""
            body = self.get_json_body() or {}
            if body.get("clear"):
                fake.clear()
            inject_faults(fake, body.get("inject", []))
            self.finish(json.dumps(fault_state()))

    class KernelStateHandler(APIHandler):
        """GET bench/kernel-state: kernel ids the extension keeps something for (benchmark-only)."""

        @web.authenticated
        def get(self) -> None:
            """Per place (public accessors only), the kernel ids held there."""
            app = self.settings.get("tfgpu_services")
            places = {
                "launches": lambda: app.kernels.launches.kernel_ids(),
                "tokens": lambda: app.tokens.kernel_ids(),
                "reports": lambda: app.reports.kernel_ids(),
                "placement reservations": lambda: set(app.policies.placement.reserved()),
                "attribution kernels": lambda: {k.kernel_id for k in app.attribution.kernels},
                "report folders": lambda: set(
                    os.listdir(app.kernels.record_root) if os.path.isdir(app.kernels.record_root) else ()
                ),
            }
            state: dict = {}
            for place, read in places.items():
                try:
                    state[place] = sorted(read())
                except Exception as err:  # noqa: BLE001 - a place this version lacks
                    state[place] = f"unreadable: {type(err).__name__}"
            self.finish(json.dumps(state))

    class GpuProcessesHandler(APIHandler):
        """GET/POST bench/processes: the fake's GPU processes (benchmark-only)."""

        @web.authenticated
        def get(self) -> None:
            """Every listed process: pid, GPU, MIG slot (or null) and used memory."""
            self.finish(json.dumps({"processes": list_processes(fake)}))

        @web.authenticated
        def post(self) -> None:
            """``{"add": [{"pid", "gpu", "mig", "used_memory"}], "remove": [pid, ...]}``."""
            body = self.get_json_body() or {}
            try:
                remove_processes(fake, {int(pid) for pid in body.get("remove", [])})
                add_processes(fake, body.get("add", []))
            except (KeyError, TypeError, ValueError) as err:
                raise web.HTTPError(400, f"bad process spec: {err}") from None
            self.finish(json.dumps({"processes": list_processes(fake)}))

    class StreamClientsHandler(APIHandler):
        """GET bench/stream: the stream's open clients, as the server counts them (bench only)."""

        @web.authenticated
        def get(self) -> None:
            """Open clients, the bytes they have pending, and each one's output."""
            outputs = list(self.settings["tfgpu_services"].stream.clients)
            self.finish(json.dumps({
                "clients": len(outputs),
                "pending_bytes": sum(o.pending_bytes for o in outputs),
                "outputs": [
                    {"in_flight": o.in_flight, "pending_bytes": o.pending_bytes, "sent": o.sent,
                     "skipped": o.skipped, "closed_because": o.closed_because}
                    for o in outputs
                ],
            }))  # fmt: skip

    class BenchServerApp(ServerApp):
        """ServerApp plus the benchmark endpoints, a lifetime bound and a parent watchdog."""

        def init_webapp(self) -> None:
            super().init_webapp()
            self.web_app.add_handlers(
                ".*$",
                [
                    (url_path_join(self.base_url, "bench/nvml"), NvmlCountersHandler),
                    (url_path_join(self.base_url, "bench/requests"), RequestTimesHandler),
                    (url_path_join(self.base_url, "bench/faults"), NvmlFaultsHandler),
                    (url_path_join(self.base_url, "bench/kernel-state"), KernelStateHandler),
                    (url_path_join(self.base_url, "bench/processes"), GpuProcessesHandler),
                    (url_path_join(self.base_url, "bench/stream"), StreamClientsHandler),
                ],
            )
            log_function = self.web_app.settings.get("log_function")

            def timed_log(handler) -> None:
                request_log.append((handler.request.path, handler.request.request_time()))
                if log_function is not None:
                    log_function(handler)

            self.web_app.settings["log_function"] = timed_log

        def start_ioloop(self) -> None:
            self.io_loop.add_callback(self._bench_ready)
            self.io_loop.call_later(args.max_seconds, self.stop)
            parent = os.getppid()

            def watchdog() -> None:
                if os.getppid() != parent:  # orphaned: the benchmark died
                    self.stop()

            ioloop.PeriodicCallback(watchdog, 2000).start()
            super().start_ioloop()

        async def _bench_ready(self) -> None:
            package = getattr(sys.modules.get("jupyter_tfgpu"), "__file__", None)
            info = {
                "url": url, "token": token, "pid": os.getpid(), "root": str(root),
                "package": str(Path(package).parent) if package else None,
            }  # fmt: skip
            if args.ready_file:
                tmp = args.ready_file + ".tmp"
                Path(tmp).write_text(json.dumps(info))
                os.replace(tmp, args.ready_file)
            if args.quick:
                try:
                    print(json.dumps(await smoke_check(url, token), indent=2), flush=True)
                finally:
                    self.stop()

    port = args.port or free_port()
    token = args.token or secrets.token_hex(24)
    base_url = "/" + args.base_url.strip("/") + "/" if args.base_url.strip("/") else "/"
    url = f"http://127.0.0.1:{port}{base_url}"
    argv_server = [
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={base_url}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root / 'notebooks'}",
        "--ServerApp.open_browser=False",
        "--allow-root",
        "--TFGPU.backend=nvml",
        *server_args,
    ]
    BenchServerApp.launch_instance(argv=argv_server)
    return 0


async def smoke_check(url: str, token: str) -> dict:
    """Read the extension's and the launcher's endpoints once (for ``--quick``)."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient()
    headers = {"Authorization": f"token {token}"}
    out: dict = {"url": url}
    for _ in range(50):  # the first sample lands within a second
        gpus = json.loads((await client.fetch(url + "tfgpu/api/gpus", headers=headers)).body)
        if gpus.get("timestamp") is not None:
            break
        await asyncio.sleep(0.1)
    status = json.loads((await client.fetch(url + "tfgpu/api/status", headers=headers)).body)
    nvml = json.loads((await client.fetch(url + "bench/nvml", headers=headers)).body)
    out.update(
        {
            "backend": status["backend"],
            "available": status["available"],
            "device_count": status["device_count"],
            "gpus_in_snapshot": len(gpus["gpus"]),
            "nvml_calls": nvml["calls"],
            "nvml_call_time_s": round(nvml["call_time"], 4),
        }
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
