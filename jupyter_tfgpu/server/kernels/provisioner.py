"""The kernel provisioner: starts each kernel with its notebook's effective GPU policy.

It is a ``LocalProvisioner`` that, just before the kernel process starts, renders the policy
into the kernel's environment (CUDA_VISIBLE_DEVICES, TF_*, XLA_*, PYTORCH_* and the policy as
JSON) and prepends the kernel bootstrap folder to PYTHONPATH, so the in-process knobs are
applied when the notebook imports TensorFlow, PyTorch or JAX. Every process the kernel starts
inherits the same environment. Non-Python kernels start normally and still get the variables.

It also takes the server's own credentials out of the kernel's environment (the kernel talks
to the server with a token of its own), and names the kernel in it (``TFGPU_KERNEL_ID``) so
that processes the kernel detaches are still attributed to it.

A kernelspec that names another provisioner keeps it: that kernel gets no policy, and
``GET kernels`` shows ``applied: null`` for it.

What it needs of the server (its launches, tokens, record folder, URL) is one
``ProvisionerContext``, set when the server's services start and cleared when they stop.

The server's hard caps (``TFGPU.hard_caps``) reach the kernel through its launch: what they add
to its environment and put before its command. They are told before the kernel's processes get
SIGTERM or SIGKILL, and once its process is gone (stopped, restarting, or a start that failed).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from importlib.resources import files
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from jupyter_client.provisioning import LocalProvisioner

from jupyter_tfgpu.protocol import KERNEL_ID_ENV, KERNEL_TOKEN_ENV, RECORD_DIR_ENV, SERVER_URL_ENV

if TYPE_CHECKING:
    from jupyter_tfgpu.server.kernels.channel import KernelTokens
    from jupyter_tfgpu.server.kernels.launches import KernelLaunches

PROVISIONER_NAME = "tfgpu-provisioner"
# The IPython extension that loads %tfgpu; it lives in the bootstrap folder, so an ipykernel in
# another Python environment finds it too, and it fails soft there (see its docstring).
MAGIC_EXTENSION = "tfgpu_magic"
# The server's own credentials, as jupyter_server reads them from its environment: with either,
# a notebook's code could use every route of the server as the user, not just its own channel.
SERVER_TOKEN_ENV = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE")
# JupyterHub's token of the single-user server (JPY_API_TOKEN is its older name): it opens this
# server's every route too. Kept in kernels only with TFGPU.keep_hub_token_in_kernels.
HUB_TOKEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
# The signals that end a kernel's processes (kill and terminate send these): a hard-caps
# mechanism may need to act first (MPS clients are ended through their daemon).
ENDING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL})


def bootstrap_dir() -> str:
    """The folder holding the kernel-side sitecustomize.py."""
    return str(Path(str(files("jupyter_tfgpu.in_kernel").joinpath("bootstrap"))))


def is_ipykernel(cmd: list[str]) -> bool:
    """Whether a kernel command line starts ipykernel (``ipykernel_launcher`` or ``-m ipykernel``)."""
    names = [os.path.basename(str(arg)) for arg in cmd]
    if any(name in ("ipykernel_launcher", "ipykernel_launcher.py") for name in names):
        return True
    return any(
        flag == "-m" and module in ("ipykernel", "ipykernel_launcher")
        for flag, module in pairwise(cmd)
    )


def with_magic(cmd: list[str]) -> list[str]:
    """An ipykernel command line that also loads the %tfgpu magic; other kernels' unchanged."""
    flag = f"--IPKernelApp.extra_extensions={MAGIC_EXTENSION}"
    if not cmd or not is_ipykernel(cmd) or flag in cmd:
        return cmd
    return [*cmd, flag]


@dataclass(frozen=True)
class ProvisionerContext:
    """What the provisioner needs of the server that runs it."""

    launches: KernelLaunches  # starts each kernel's launch and keeps it
    tokens: KernelTokens | None = None  # the kernel channel's tokens; None: no channel
    record_root: str | None = None  # where each kernel's bootstrap writes its record
    server_url: str | None = None  # the server as a kernel reaches it (None: a unix socket)
    keep_hub_token: bool = False  # TFGPU.keep_hub_token_in_kernels


def strip_credentials(env: dict[str, str], keep_hub_token: bool = False) -> None:
    """Remove the server's own credentials (and, unless kept, the hub's) from ``env``."""
    for name in SERVER_TOKEN_ENV if keep_hub_token else SERVER_TOKEN_ENV + HUB_TOKEN_ENV:
        env.pop(name, None)


class TFGPUProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A LocalProvisioner that applies the notebook's GPU policy at every (re)start."""

    # The server's, while its services run; without it the provisioner is a plain
    # LocalProvisioner that still strips the server's credentials (e.g. in a process that is not
    # a jupyter-tfgpu server, or after the server's services stopped).
    context: ClassVar[ProvisionerContext | None] = None

    @classmethod
    def serve(cls, context: ProvisionerContext) -> None:
        """Start kernels with this server's context (its services started)."""
        cls.context = context

    @classmethod
    def stop_serving(cls, context: ProvisionerContext) -> None:
        """Stop using ``context`` (its services stopped), unless another server's replaced it."""
        if cls.context is context:
            cls.context = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Let LocalProvisioner prepare the launch, then add the policy to the environment."""
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs["env"]
        context = type(self).context
        # Before anything else, even without a context: the kernel runs untrusted code.
        strip_credentials(env, keep_hub_token=context is not None and context.keep_hub_token)
        kernel_id = self.kernel_id or kwargs.get("kernel_id")
        env.pop(KERNEL_ID_ENV, None)  # never inherited from the server's own environment
        if kernel_id:
            env[KERNEL_ID_ENV] = kernel_id
        if context is None:
            return kwargs
        start = await context.launches.start(
            kernel_id, env.get("JPY_SESSION_NAME"), inherited=env, language=self._language()
        )
        for name, value in start.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (bootstrap_dir(), env.get("PYTHONPATH", "")) if p
        )
        if kwargs.get("cmd"):
            kwargs["cmd"] = [*start.wrapper, *with_magic(kwargs["cmd"])]
        if context.record_root and kernel_id:
            env[RECORD_DIR_ENV] = os.path.join(context.record_root, kernel_id)
        # The kernel channel: a token for this kernel alone, never the server's own token.
        env.pop(KERNEL_TOKEN_ENV, None)
        if context.tokens is not None and context.server_url and kernel_id:
            env[SERVER_URL_ENV] = context.server_url
            env[KERNEL_TOKEN_ENV] = context.tokens.issue(kernel_id)
        return kwargs

    def _language(self) -> str | None:
        """The kernelspec's language ("python"), None when it names none."""
        return getattr(getattr(self, "kernel_spec", None), "language", None) or None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        """Start the kernel's process; a start that fails releases its hard cap."""
        try:
            return await super().launch_kernel(cmd, **kwargs)
        except BaseException:
            await self._release()
            raise

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel's processes; before one that ends them, its hard cap acts."""
        context = type(self).context
        if signum in ENDING_SIGNALS and context is not None and self.kernel_id and self.process:
            await context.launches.before_signal(self.kernel_id, self.pid)
        await super().send_signal(signum)

    async def cleanup(self, restart: bool = False) -> None:
        """The kernel's process is gone (it stopped, or restarts): release its hard cap."""
        await super().cleanup(restart)
        await self._release()

    async def _release(self) -> None:
        context = type(self).context
        if context is not None and self.kernel_id:
            await context.launches.release(self.kernel_id)
