"""Run candidate programs in sandboxed worker processes, and say exactly how sandboxed.

Modelled on openai/human-eval's ``execution.py``: a separate process, a
deadline, a hard kill, resource limits, a structured result. And, like it,
honest about what it is. What this module guarantees, per isolation level:

Always ("rlimits" level and above):
  - the candidate runs in its own process, in a new session, started from a
    fresh working directory, with an environment rebuilt from an allow list
    (``ENV_ALLOW``) from which anything named like a secret (``SECRET_NAME``)
    is dropped, so API keys and tokens are not inherited;
  - resource limits: address space (default 8 GiB), CPU seconds, file size,
    open files, no core dumps; a wall-clock deadline per stage after which the
    whole process group is killed with SIGKILL (no SIGTERM a program could catch);
  - at most ``tail_bytes`` (20 KB) of stdout and stderr per stage are kept, and
    a program that prints more than ``max_output_bytes`` in total is killed;
  - whatever the program does, the caller gets an ``EvalResult``, and the
    worker's process group (and, where the uid is dropped, every process of its
    uid) is killed and reaped before the result is returned.

"bubblewrap" level, when ``bwrap`` is installed and a one-time probe shows that
it works here (it needs root or unprivileged user namespaces), adds:
  - no network (a new, empty network namespace: not even the host's loopback);
  - a PID namespace (the candidate sees only its own processes, cannot signal
    anything outside, and everything it started dies with it) and new IPC and
    UTS namespaces;
  - a read-only view of the filesystem; the only writable place is a private,
    size-limited tmpfs at /tmp that is the working directory and disappears with
    the sandbox; /root, /home, /run, /var/tmp are replaced by empty tmpfs (the
    interpreter, the project and the corpus cache are mounted back read-only);
  - when the evaluator runs as root, the worker drops to an unprivileged uid of
    its own before it imports anything, which makes RLIMIT_NPROC effective (a
    fork bomb stops at ``processes``) and file permissions apply.

What it does NOT guarantee:
  - integrity of the reported metrics against a program that gets past the
    static stage: the candidate runs in the same process as the worker that
    reports on it, so such a program could forge its own result. The static
    stage (``evaluator.static``) is what stands between a program and its
    result channel; the sandbox protects the host and the campaign, not the
    ranking;
  - at the "rlimits" level (no bubblewrap): no network isolation, no
    filesystem isolation beyond what the uid's permissions give (and none at
    all when running as root without a usable unprivileged uid), and a program
    that double-forks into a new session can outlive the job unless the uid
    was dropped; a fork bomb is only contained when the uid was dropped;
  - protection against kernel exploits, side channels, or exhausting the
    machine's memory through many small processes below the per-process limit.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import uuid

from evaluator import procfs

GiB = 1 << 30
MiB = 1 << 20
PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

ENV_ALLOW = (
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ", "JAX_PLATFORMS", "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
)  # fmt: skip
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|CERT|API", re.I)
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/root", "/home", "/run", "/mnt", "/media")
SANDBOX_WORKDIR = "/tmp"  # inside bubblewrap: a private tmpfs


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation for every worker process.

    Attributes:
      memory_limit_bytes: RLIMIT_AS per process (None: unlimited; needed on GPUs,
        whose drivers reserve huge address ranges).
      startup_cpu_s: CPU seconds a worker may spend importing before it gets a job.
      cpu_slack_s: CPU seconds allowed beyond ``sum(stage timeouts) * cores`` per job.
      file_size_bytes: RLIMIT_FSIZE: the largest file the program may write.
      open_files: RLIMIT_NOFILE.
      processes: RLIMIT_NPROC (threads count too) for a dropped uid; JAX uses ~20.
      workdir_bytes: size of the private tmpfs working directory (bubblewrap only).
      max_output_bytes: a program that prints more (stdout + stderr) is killed.
      tail_bytes: how much of stdout and stderr each stage keeps.
      bubblewrap: ``"auto"`` (use it when the probe passes), ``"require"`` (fail if
        it does not) or ``"never"``.
      drop_privileges: when root, run workers under an unprivileged uid of their own.
      uid_base: first uid for workers (default: derived from this process id, so two
        campaigns on one machine do not share uids).
      startup_timeout_s: how long a worker may take to import JAX and report ready.
      env_allow: environment variables passed through (secret-looking names never are).
      extra_ro_paths: more paths to make visible, read-only, inside bubblewrap.
    """

    memory_limit_bytes: int | None = 8 * GiB
    startup_cpu_s: float = 300.0
    cpu_slack_s: float = 30.0
    file_size_bytes: int = 64 * MiB
    open_files: int = 512
    processes: int = 256
    workdir_bytes: int = 256 * MiB
    max_output_bytes: int = 64 * MiB
    tail_bytes: int = 20 * 1024
    bubblewrap: str = "auto"
    drop_privileges: bool = True
    uid_base: int | None = None
    startup_timeout_s: float = 180.0
    env_allow: tuple[str, ...] = ENV_ALLOW
    extra_ro_paths: tuple[str, ...] = ()

    def __post_init__(self):
        if self.bubblewrap not in ("auto", "require", "never"):
            raise ValueError(f"bubblewrap must be auto, require or never, got {self.bubblewrap!r}")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes < 64 * MiB:
            raise ValueError(f"memory_limit_bytes {self.memory_limit_bytes} is too small to start Python")
        for name in ("startup_cpu_s", "file_size_bytes", "open_files", "processes", "max_output_bytes", "tail_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which protections are active. ``str()`` is what every result records.

    Attributes:
      level: ``"bubblewrap"`` or ``"rlimits"``.
      features: the active protections, e.g. ``no-network``, ``pid-namespace``,
        ``read-only-fs``, ``hidden-home``, ``uid-drop``, ``nproc``.
      note: why a stronger level is not active ("" when bubblewrap is).
    """

    level: str
    features: tuple[str, ...]
    note: str = ""

    def __str__(self) -> str:
        return f"{self.level}: {', '.join(self.features)}"

    def has(self, feature: str) -> bool:
        return feature in self.features

    def to_dict(self) -> dict:
        return {"level": self.level, "features": list(self.features), "note": self.note, "summary": str(self)}


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the candidate): bwrap broken, worker cannot start."""


# ----------------------------------------------------------------------------- probing


def _world_reachable(path: str) -> bool:
    """Whether an unprivileged uid can reach ``path``: every ancestor o+x, the path o+r."""
    p = pathlib.Path(path).resolve()
    try:
        for parent in reversed(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


def needed_paths(config: SandboxConfig) -> list[str]:
    """What the worker must see: the interpreter and its library, installed packages,
    the project, and ``extra_ro_paths``. Never a hidden directory itself, an
    ancestor of one, or the home directory: ``sys.path`` can hold the directory a
    script was started from (``/tmp``, ``~``), so only package directories are taken from it."""
    paths = {sys.prefix, sys.base_prefix, str(PROJECT_ROOT), os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    paths.update(p for p in sys.path if "site-packages" in p or "dist-packages" in p)
    paths.update(config.extra_ro_paths)
    home = str(pathlib.Path.home())
    out = set()
    for p in paths:
        if not p or not os.path.exists(p):
            continue
        for q in {os.path.abspath(p), os.path.realpath(p)}:
            too_wide = q == home or any(h == q or h.startswith(q.rstrip("/") + "/") for h in HIDDEN_DIRS)
            if not too_wide:
                out.add(q)
    return sorted(out)


def _bwrap_args(config: SandboxConfig, drop: bool, extra_ro: tuple[str, ...] = ()) -> list[str]:
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for dev in sorted(pathlib.Path("/dev").glob("nvidia*")):
        args += ["--dev-bind", str(dev), str(dev)]
    hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for d in hidden:
        if d == SANDBOX_WORKDIR:
            args += ["--perms", "01777", "--size", str(config.workdir_bytes), "--tmpfs", d]
        else:
            args += ["--perms", "0755", "--size", str(16 * MiB), "--tmpfs", d]
    made = set(hidden)
    for path in [*needed_paths(config), *extra_ro]:
        under = [d for d in hidden if path == d or path.startswith(d + "/")]
        if not under or not os.path.exists(path):
            continue
        parts = pathlib.PurePosixPath(path).relative_to(under[0]).parts
        cur = under[0]
        for part in parts[:-1]:
            cur = f"{cur}/{part}"
            if cur not in made:
                args += ["--perms", "0755", "--dir", cur]
                made.add(cur)
        args += ["--ro-bind", path, path]
        made.add(path)
    args += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    # No --new-session: Popen(start_new_session=True) already leaves no controlling terminal,
    # and staying in the worker's process group lets one killpg reach every sandboxed process.
    args += ["--hostname", "sandbox", "--die-with-parent", "--chdir", SANDBOX_WORKDIR]
    if drop:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return args


@functools.cache
def probe_isolation(config: SandboxConfig = SandboxConfig()) -> Isolation:
    """Find out once which isolation works here (runs bwrap with a trivial program)."""
    root = os.geteuid() == 0
    base = ["session", "rlimits", "env-scrub", "private-workdir"]
    note = "bubblewrap turned off (bubblewrap='never')" if config.bubblewrap == "never" else ""
    if config.bubblewrap != "never":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            note = "bwrap is not installed (Debian: apt-get install bubblewrap)"
        else:
            drop = root and config.drop_privileges
            code = "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); " if drop else ""
            code += "import json; print('sandbox-ok', os.getuid())" if drop else "import os; print('sandbox-ok', os.getuid())"
            cmd = _bwrap_args(config, drop) + ["--", sys.executable, "-I", "-c", code]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=_base_env(config))
                ok = out.returncode == 0 and "sandbox-ok" in out.stdout
                note = "" if ok else f"bwrap does not work here: {(out.stderr or out.stdout).strip()[-300:]}"
            except (OSError, subprocess.TimeoutExpired) as e:
                ok, note = False, f"bwrap does not work here: {e}"
            if ok:
                features = base + ["no-network", "pid-namespace", "ipc-namespace", "read-only-fs", "private-tmp", "hidden-home"]
                if drop:
                    features += ["uid-drop", "nproc"]
                return Isolation("bubblewrap", tuple(features))
    if config.bubblewrap == "require":
        raise SandboxError(f"bubblewrap is required but unavailable: {note}")
    if root and config.drop_privileges and all(_world_reachable(p) for p in needed_paths(config)):
        base += ["uid-drop", "nproc"]
    elif root:
        note += ("; " if note else "") + "running as root without bubblewrap: the worker keeps root's uid"
    return Isolation("rlimits", tuple(base), note)


# ----------------------------------------------------------------------------- environment


def _base_env(config: SandboxConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in config.env_allow and not SECRET_NAME.search(k)}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


def sandbox_env(config: SandboxConfig, workdir: str, marker: str, cache_dir: str | None) -> dict[str, str]:
    """The worker's whole environment: allow-listed variables and a few fixed ones."""
    env = _base_env(config)
    env.update(
        HOME=workdir,
        TMPDIR=workdir,
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONHASHSEED="0",
        PYTHONFAULTHANDLER="1",
        SCALESEARCH_SANDBOX=marker,
    )
    if cache_dir:
        env["SCALESEARCH_CACHE"] = cache_dir
    return env


# ----------------------------------------------------------------------------- uids


class UidPool:
    """Unprivileged uids for workers, one per live worker, so that limits and sweeps
    never reach another worker's processes.

    Within a process, use ``uid_pool()`` (one pool per base). Across processes
    (two campaigns, or test runs, on one machine) a uid is claimed with an
    exclusive ``flock`` on ``$TMPDIR/scalesearch-uids/<uid>``, held while the
    worker lives, and a uid that still has processes is never handed out.
    """

    def __init__(self, base: int | None = None, size: int = 256):
        self.base = base if base is not None else 200_000 + (os.getpid() % 4096) * size
        self.free = list(range(self.base, self.base + size))
        self.lock = threading.Lock()
        self.held: dict[int, int] = {}
        self.lock_dir = pathlib.Path(tempfile.gettempdir()) / "scalesearch-uids"

    def acquire(self) -> int:
        self.lock_dir.mkdir(mode=0o700, exist_ok=True)
        with self.lock:
            for i, uid in enumerate(self.free):
                fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                if procfs.pids_of_uid(uid):
                    os.close(fd)
                    continue
                self.held[uid] = fd
                return self.free.pop(i)
        raise SandboxError("no free sandbox uid (every uid in the pool is in use)")

    def release(self, uid: int) -> None:
        with self.lock:
            fd = self.held.pop(uid, None)
            if fd is not None:
                os.close(fd)  # releases the flock
            self.free.append(uid)


@functools.cache
def uid_pool(base: int | None = None) -> UidPool:
    """The process-wide pool for ``base`` (None: derived from this process id)."""
    return UidPool(base)


def sweep_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid``: ``kill -9 -1`` as that uid, which
    reaches processes of the uid even while they fork, then each one found."""
    kill = shutil.which("kill")
    if kill:
        subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], capture_output=True, env={})
    for pid in procfs.pids_of_uid(uid):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def worker_command(
    config: SandboxConfig, isolation: Isolation, worker_args: dict, extra_ro: tuple[str, ...] = ()
) -> list[str]:
    """The argv that starts one worker under the active isolation."""
    boot = (
        f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
        "from evaluator.worker import main; main(sys.argv[1])"
    )
    python = [sys.executable, "-I", "-c", boot, json.dumps(worker_args)]
    if isolation.level == "bubblewrap":
        return _bwrap_args(config, isolation.has("uid-drop"), extra_ro) + ["--", *python]
    return python


def new_marker() -> str:
    return uuid.uuid4().hex
