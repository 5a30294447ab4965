"""Operator settings: one Configurable whose traits' help texts are the admin manual."""

from __future__ import annotations

import math
import os

from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, Union, default, validate
from traitlets.config import Configurable

from jupyter_tfgpu.policy.model import PolicyError, validate_policy
from jupyter_tfgpu.server.config_traits import JSONDict, JSONList
from jupyter_tfgpu.server.hardcaps import modes as hard_caps_modes

DEFAULT_SIMULATED_GPUS = [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 2}]

# Settings whose default an environment variable sets (a config file or the command line wins).
ENVIRONMENT_VARIABLES = {"backend": "TFGPU_BACKEND", "on_config_error": "TFGPU_ON_CONFIG_ERROR"}

# Bounds that fit a server. The history buffer is allocated whole at start: 8 bytes per sample
# plus 40 per GPU per sample (5 series of doubles), about 3.5 MB per GPU at this many samples.
MAX_HISTORY_SAMPLES = 86_400
MAX_INTERVAL = 3600.0  # seconds between two readings of any group
MAX_MEMORY_MB = 1_048_576  # 1 TiB, in MiB: more than any GPU has
MAX_SIMULATED_GPUS = 64  # as many as a policy's devices can name


class TFGPU(Configurable):
    """GPU monitoring and per-notebook GPU policies for this Jupyter server."""

    backend = Enum(
        ["auto", "nvml", "simulated", "none"],
        default_value="auto",
        help="""Where GPU readings come from.
        'auto': NVML when the NVIDIA library and a GPU are present, else no backend (the API
        then answers available=false with the reason). 'nvml': NVML only. 'simulated':
        labelled simulated GPUs (demos, binder, tests) whose per-process memory is the real
        resident memory of the kernels' process trees. 'none': GPU monitoring off.
        Environment variable: TFGPU_BACKEND.""",
    ).tag(config=True)

    @default("backend")
    def _default_backend(self):
        return os.environ.get(ENVIRONMENT_VARIABLES["backend"], "auto")

    sample_interval = Float(
        1.0,
        min=0.1,
        max=MAX_INTERVAL,
        help="""Seconds between two samples of the fast GPU fields (utilization, memory),
        from 0.1 to 3600. One sampler per server serves every browser tab, websocket, REST
        call and metric.""",
    ).tag(config=True)

    history_seconds = Int(
        3600,
        min=0,
        max=7 * 86400,
        help="""Seconds of history the server keeps in memory for the sparklines and
        GET gpus/history, from 0 to 604800 (7 days); at most 86400 samples
        (history_seconds / sample_interval), so a week needs sample_interval >= 7. The ring
        buffer is allocated at start: about 40 bytes per GPU per sample.""",
    ).tag(config=True)

    nvml_budget = Float(
        0.02,
        min=0.001,
        max=1.0,
        help="""Largest share of wall time the sampler may spend inside NVML calls
        (0.02 = 2%), from 0.001 to 1. NVML calls hold the driver lock that users' GPU work needs too; when
        measured calls are slow the sampler stretches its cadences to stay under this.""",
    ).tag(config=True)

    slow_interval = Float(
        5.0,
        min=0.1,
        max=MAX_INTERVAL,
        help="""Seconds between readings of slow-changing fields (temperature, power, fan,
        clocks), from 0.1 to 3600; stretched when NVML is slow.""",
    ).tag(config=True)

    process_interval = Float(
        5.0,
        min=0.1,
        max=MAX_INTERVAL,
        help="""Seconds between readings of the GPU process lists (a few ms per GPU on real
        drivers), from 0.1 to 3600; they are also read right after a kernel starts, restarts
        or stops.""",
    ).tag(config=True)

    pcie_interval = Float(
        2.0,
        min=0.1,
        max=MAX_INTERVAL,
        help="""Seconds between PCIe throughput readings while a client watches them, from
        0.1 to 3600 (each reading samples a counter for about 20 ms per direction per GPU).
        PCIe is not read at all while nobody asks for it.""",
    ).tag(config=True)

    simulated_gpus = JSONList(
        JSONDict(),
        default_value=DEFAULT_SIMULATED_GPUS,
        help="""GPUs of the simulated backend: a list of {"name": str, "memory_gb": number
        (above 0, at most 16384), "count": int}, 64 GPUs at most in all.
        Example: [{"name": "Simulated A100 80GB", "memory_gb": 80, "count": 4}].""",
    ).tag(config=True)

    @validate("simulated_gpus")
    def _validate_simulated_gpus(self, proposal):
        for n, entry in enumerate(proposal["value"]):
            where = f"TFGPU.simulated_gpus[{n}]"
            unknown = set(entry) - {"name", "memory_gb", "count"}
            if unknown:
                raise TraitError(f"{where}: unknown keys {sorted(unknown)}")
            if not isinstance(entry.get("name", ""), str):
                raise TraitError(f"{where}.name must be a string")
            memory = entry.get("memory_gb", 16)
            number = isinstance(memory, (int, float)) and not isinstance(memory, bool)
            if not number or not 0 < memory <= 16384:  # also refuses NaN
                raise TraitError(f"{where}.memory_gb must be a number above 0 and at most 16384")
            count = entry.get("count", 1)
            whole = isinstance(count, int) and not isinstance(count, bool)
            if not whole or not 0 <= count <= MAX_SIMULATED_GPUS:
                raise TraitError(f"{where}.count must be an integer from 0 to {MAX_SIMULATED_GPUS}")
        total = sum(entry.get("count", 1) for entry in proposal["value"])
        if total > MAX_SIMULATED_GPUS:
            raise TraitError(
                f"TFGPU.simulated_gpus: {total} GPUs in all, more than {MAX_SIMULATED_GPUS} GPUs"
            )
        return proposal["value"]

    # -- policies ----------------------------------------------------------------------------

    default_policy = JSONDict(
        {},
        help="""Policy applied to every notebook that does not set a field itself, e.g.
        {"memory_growth": True} so no TensorFlow kernel maps a whole GPU by default.
        Fields: memory_growth (bool), memory_limit_mb (MiB), devices (GPU indices or UUIDs;
        [] = CPU only), allocator ("default" or "cuda_malloc_async").""",
    ).tag(config=True)

    @validate("default_policy")
    def _validate_default_policy(self, proposal):
        try:
            return validate_policy(proposal["value"])
        except PolicyError as err:
            raise TraitError(f"TFGPU.default_policy: {err}") from err

    max_memory_mb = Int(
        None,
        allow_none=True,
        min=1,
        max=MAX_MEMORY_MB,
        help="""Most GPU memory (MiB, per visible GPU, from 1 to 1048576) any kernel may use.
        Kernels without a limit get this one; a notebook asking for more is refused with 403.""",
    ).tag(config=True)

    allowed_devices = JSONList(
        Union([Int(min=0), Unicode()]),
        default_value=None,
        allow_none=True,
        help="""GPUs (indices or UUIDs) kernels may see; None allows every GPU. Kernels
        whose notebook names no GPUs see exactly these.""",
    ).tag(config=True)

    force_memory_growth = Bool(
        False,
        help="""Turn memory growth on for every kernel, whatever the notebook asks
        (TensorFlow then allocates as needed; JAX does not preallocate).""",
    ).tag(config=True)

    allow_user_policies = Bool(
        True,
        help="""Whether users may set per-notebook policies. When False only
        default_policy and the caps apply, and writes answer 403.""",
    ).tag(config=True)

    policy_store_path = Unicode(
        help="""File holding the per-notebook policies (JSON, written atomically).
        Default: `<Jupyter data dir>/tfgpu/policies.json`.""",
    ).tag(config=True)

    @default("policy_store_path")
    def _default_policy_store_path(self):
        return os.path.join(jupyter_data_dir(), "tfgpu", "policies.json")

    forced_policy = JSONDict(
        {},
        help="""Policy fields the admin fixes for every kernel, whatever the notebook asks,
        e.g. {"deterministic": True, "log_placement": False}. A notebook asking for another
        value gets 403 naming forced_policy.""",
    ).tag(config=True)

    @validate("forced_policy")
    def _validate_forced_policy(self, proposal):
        try:
            return validate_policy(proposal["value"])
        except PolicyError as err:
            raise TraitError(f"TFGPU.forced_policy: {err}") from err

    max_threads = Int(
        None,
        allow_none=True,
        min=1,
        max=4096,
        help="""Most intra-op and inter-op threads a kernel may ask for, from 1 to 4096;
        larger values are refused (403) and stored ones clamped.""",
    ).tag(config=True)

    placement_strategy = Enum(
        ["most_free_memory", "fewest_kernels", "pack"],
        default_value="most_free_memory",
        help="""How kernels with devices "auto" get their GPUs when they start:
        'most_free_memory' (ties: fewest kernels), 'fewest_kernels' (ties: most free
        memory), or 'pack' (fill the fullest GPU that still has room, keeping others free).
        Lost GPUs and GPUs outside allowed_devices are never picked. Make "auto" the default
        with default_policy = {"devices": "auto", "gpu_count": 1}.""",
    ).tag(config=True)

    use_provisioner = Bool(
        True,
        help="""Make the tfgpu-provisioner the default kernel provisioner when the
        extension loads, so kernels start with their notebook's policy. Kernelspecs that
        name another provisioner keep it (and get no policy). Left alone when an admin
        already chose another default provisioner.""",
    ).tag(config=True)

    keep_hub_token_in_kernels = Bool(
        False,
        help="""Leave JupyterHub's token (JUPYTERHUB_API_TOKEN and its older name
        JPY_API_TOKEN) in the environment of kernels this server starts. The provisioner
        always removes this server's own token (JUPYTER_TOKEN, JUPYTER_TOKEN_FILE), and by
        default the hub token too: it opens every route of this single-user server (scope
        access:servers!server, plus whatever Spawner.server_token_scopes adds), so with it a
        notebook could change other notebooks' policies or stop their kernels. Set True when
        notebooks use it to call the hub API (their own scripts, or tools that read it from
        the environment). Kernels run as the server's OS user: this keeps tokens out of
        printed environments and of variables that tools copy into logs, not out of reach of
        code that goes looking for the server's runtime files.""",
    ).tag(config=True)

    # -- enforcement -------------------------------------------------------------------------

    enforcement = Enum(
        ["off", "warn", "interrupt", "restart", "shutdown"],
        default_value="off",
        help="""What happens to a kernel that holds more GPU memory (on any one GPU) than its
        cap (its effective memory_limit_mb, which max_memory_mb bounds) for longer than
        enforcement_grace: 'warn' only tells (a dry run: an event, a log line and a
        JupyterLab notification), 'interrupt', 'restart' or 'shutdown' act on the kernel
        through the kernel manager. Only kernels of this server are ever acted on.""",
    ).tag(config=True)

    enforcement_grace = Float(
        30.0,
        min=0.0,
        max=86400.0,
        help="""Seconds a kernel may stay over its memory cap before the enforcement action
        (short peaks are forgiven), from 0 to 86400 (a day).""",
    ).tag(config=True)

    idle_timeout = Float(
        0.0,
        min=0.0,
        max=30 * 86400.0,
        help="""Seconds a kernel may sit idle while holding at least idle_min_memory_mb of GPU
        memory before idle_action frees it, from 0 to 2592000 (30 days); 0 turns idle reaping
        off.""",
    ).tag(config=True)

    idle_min_memory_mb = Int(
        256,
        min=0,
        max=MAX_MEMORY_MB,
        help="""Idle kernels holding less GPU memory than this (MiB, all GPUs together, from 0
        to 1048576) are left alone by the idle reaper.""",
    ).tag(config=True)

    idle_action = Enum(
        ["warn", "interrupt", "restart", "shutdown"],
        default_value="restart",
        help="""What the idle reaper does: 'restart' frees the GPU memory and keeps the
        notebook's kernel; 'shutdown' stops the kernel; 'warn' only tells.""",
    ).tag(config=True)

    max_actions_per_hour = Int(
        3,
        min=1,
        max=3600,
        help="""At most this many enforcement actions on one kernel per hour (from 1 to
        3600); past it the enforcer only warns, so a notebook that re-allocates at once
        cannot be restarted in a loop.""",
    ).tag(config=True)

    @validate(
        "sample_interval",
        "nvml_budget",
        "slow_interval",
        "process_interval",
        "pcie_interval",
        "enforcement_grace",
        "idle_timeout",
    )
    def _validate_finite(self, proposal):
        # Bounds refuse the infinities; NaN passes every comparison, so refuse it here.
        if math.isnan(proposal["value"]):
            raise TraitError(f"TFGPU.{proposal['trait'].name}: expected a number, not NaN")
        return proposal["value"]

    caps_file = Unicode(
        None,
        allow_none=True,
        help="""A JSON file of caps and enforcement settings that the server reads at start
        and again whenever it changes (it looks every 2 seconds), so they change without a
        restart and without stopping any kernel: an object of TFGPU settings such as
        {"max_memory_mb": 20480, "enforcement": "restart"}, of these only: default_policy,
        max_memory_mb, allowed_devices, force_memory_growth, allow_user_policies,
        forced_policy, max_threads, placement_strategy, enforcement, enforcement_grace,
        idle_timeout, idle_min_memory_mb, idle_action, max_actions_per_hour. Its values win
        over the config files and the environment; the command line wins over it (a setting
        given in both is reported, and the file's value is not used). The server's user, whom
        every notebook runs as, must not be able to change it: the file, the folders on its
        path and any symbolic link to it must not belong to that user (unless the server runs
        as root), and the file and those folders must not be writable by group or others (a
        sticky folder such as /tmp excepted). A file that fails that, does not validate or is
        missing stops the server at start (see on_config_error); while the server runs, the
        caps in force then stay as they were, and the problem is logged and listed in GET
        config until the file is fixed. None (the default): no caps file.""",
    ).tag(config=True)

    hard_caps = Enum(
        list(hard_caps_modes.SETTING_VALUES),
        default_value="off",
        help=f"""Whether the NVIDIA driver, and not only the frameworks, holds each kernel at
        its GPU memory cap (its effective memory_limit_mb). {hard_caps_modes.manual()} 'auto':
        the first mode this machine allows and that starts, in the order
        {hard_caps_modes.AUTO_ORDER}, else off.
        GET status (hard_caps) says which mode is in force, why not the one asked for, and
        what this machine lacks for each; GET kernels/{{id}} says how each kernel's cap is
        held (level driver, framework or none, per GPU, with the reason it is not driver).
        A mode named here that cannot be used is a start-up problem: the server stops, or
        with on_config_error = 'warn' runs with 'off' and lists it in GET config. Read at
        start only (not from the caps file).""",
    ).tag(config=True)

    # -- start-up ----------------------------------------------------------------------------

    on_config_error = Enum(
        ["stop", "warn"],
        default_value="stop",
        help="""What the server does when a TFGPU setting is wrong: a value that does not
        validate, a setting name that does not exist, or a config file with TFGPU settings
        that failed to load. 'stop': log each error (CRITICAL) and stop the server with exit
        status 1, so it never runs kernels without the admin's caps. 'warn': log each error,
        start without the wrong settings (their defaults apply) and list them under problems
        in GET config. Environment variable: TFGPU_ON_CONFIG_ERROR, which still counts when
        the config file that would set this one is broken.""",
    ).tag(config=True)

    @default("on_config_error")
    def _default_on_config_error(self):
        return os.environ.get(ENVIRONMENT_VARIABLES["on_config_error"], "stop")
