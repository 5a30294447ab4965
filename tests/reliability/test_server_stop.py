"""A server that stops leaves nothing of the extension behind: no folder in the runtime dir, no
task still pending on its event loop."""

from __future__ import annotations

import json
import urllib.request

from jupyter_client.blocking import BlockingKernelClient

from tests.server_process import TOKEN, Servers

# What the bootstrap does once a framework is imported: write the process's record in the
# folder the provisioner named (importing TensorFlow here would only make the test slow).
WRITE_RECORD = """
import json, os
folder = os.environ["TFGPU_RECORD_DIR"]
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as out:
    json.dump({"pid": os.getpid()}, out)
"""


def post(server, path: str, body: dict) -> dict:
    """POST JSON with the token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def test_a_stopped_server_leaves_no_runtime_folder_and_no_pending_task(tmp_path):
    """Kernels ran and were listed while the server stopped; afterwards their record folders,
    and the server's own, are gone, and nothing was left pending on its loop."""
    with Servers(tmp_path) as servers:
        server = servers([]).start()
        server.wait_until_serving()
        # Given two notebooks' kernels, listed (each listing refreshes the kernel registry)
        runtime = tmp_path / "runtime"
        for name in ("a.ipynb", "b.ipynb"):
            body = {"path": name, "name": name, "type": "notebook", "kernel": {"name": "python3"}}
            kernel_id = post(server, "api/sessions", body)["kernel"]["id"]
            client = BlockingKernelClient()
            client.load_connection_file(runtime / f"kernel-{kernel_id}.json")
            client.start_channels()
            try:
                client.wait_for_ready(timeout=120)
                reply = client.execute_interactive(WRITE_RECORD, timeout=120)
                assert reply["content"]["status"] == "ok"
            finally:
                client.stop_channels()
        for _ in range(5):
            server.get("tfgpu/api/kernels")
        assert [p.name for p in runtime.iterdir() if p.name.startswith("tfgpu-")]
        # When the server is stopped as systemd stops it
        server.process.terminate()
        assert server.process.wait(timeout=60) == 0
    # Then nothing of the extension is left in the runtime folder, and no task was destroyed
    # while pending
    assert [p.name for p in runtime.iterdir() if p.name.startswith("tfgpu-")] == []
    assert "Task was destroyed but it is pending" not in server.text()
