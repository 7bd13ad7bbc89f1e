"""The parent's side of one worker: start it warm, hand it one job, watch the clock, kill it.

A ``WorkerProcess`` is started before there is a job for it, imports JAX while
it waits (inside the sandbox, under the limits), and is then given exactly one
job. It never serves a second candidate: after the job, its whole process
group (and its uid's processes) are killed, reaped and its working directory
removed, whatever the candidate did.

One reader thread per worker drains stdout, stderr and the control pipe as
they fill, so a chatty program can never block, keeps only the tails, and
kills a program that prints more than the configured cap.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable

from evaluator import procfs
from evaluator.protocol import Job, StageSpec
from evaluator.result import EvalResult, ProcessEnd, Status, classify_exit
from evaluator.sandbox import SANDBOX_WORKDIR, Isolation, SandboxConfig, SandboxError, UidPool, sandbox_env, sweep_uid
from evaluator.sandbox import new_marker, worker_command

_EOF = object()
# Sees a passed stage before the next may start; a result it returns ends the job in its place.
Gate = Callable[[EvalResult], "EvalResult | None"]
MAX_CONTROL_BYTES = 64 << 20


class _Tail:
    """The last ``limit`` bytes written to a stream, plus the total count."""

    def __init__(self, limit: int):
        self.limit, self.buf, self.total = limit, bytearray(), 0
        self.lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self.lock:
            self.total += len(data)
            self.buf += data
            if len(self.buf) > 2 * self.limit:
                del self.buf[: -self.limit]

    def take(self) -> str:
        with self.lock:
            text = bytes(self.buf[-self.limit :]).decode("utf-8", "replace")
            self.buf.clear()
        return text


class WorkerProcess:
    """One sandboxed worker. Call ``start()``, then ``run(job)`` once; ``run`` always cleans up."""

    def __init__(
        self,
        config: SandboxConfig,
        isolation: Isolation,
        runner: str,
        cores: tuple[int, ...] = (),
        uids: UidPool | None = None,
        cache_dir: str | None = None,
        corpus: str | None = None,
        extra_ro: tuple[str, ...] = (),
    ):
        self.config, self.isolation, self.runner = config, isolation, runner
        self.cores, self.uids, self.cache_dir, self.corpus, self.extra_ro = cores, uids, cache_dir, corpus, extra_ro
        self.marker = new_marker()
        self.messages: queue.Queue = queue.Queue()
        self.uid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.workdir: str | None = None
        self.ready = threading.Event()
        self.ready_info: dict = {}
        self._stop = threading.Event()
        self._killed_reason: str | None = None
        self._end: ProcessEnd | None = None
        self._lock = threading.Lock()
        self.out, self.err = _Tail(config.tail_bytes), _Tail(config.tail_bytes)

    # ------------------------------------------------------------------ start
    def start(self) -> WorkerProcess:
        bwrap = self.isolation.level == "bubblewrap"
        if self.isolation.has("uid-drop") and self.uids is not None:
            self.uid = self.uids.acquire()
        if bwrap:
            workdir = SANDBOX_WORKDIR
        else:
            workdir = self.workdir = tempfile.mkdtemp(prefix="scalesearch-sandbox-")
            if self.uid is not None:
                os.chown(workdir, self.uid, self.uid)
            os.chmod(workdir, 0o700)
        control_r, control_w = os.pipe()
        args = {
            "runner": self.runner,
            "corpus": self.corpus,
            "control_fd": control_w,
            "uid": self.uid,
            "cores": list(self.cores),
            "workdir": workdir,
            "pdeathsig": not bwrap,
            "limits": {
                "as": self.config.memory_limit_bytes,
                "cpu": self.config.startup_cpu_s,
                "fsize": self.config.file_size_bytes,
                "nofile": self.config.open_files,
                "nproc": self.config.processes if self.isolation.has("nproc") else None,
                "cpu_slack": self.config.cpu_slack_s,
            },
        }
        cmd = worker_command(self.config, self.isolation, args, self.extra_ro)
        env = sandbox_env(self.config, workdir, self.marker, self.cache_dir)
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(control_w,),
                cwd=None if bwrap else workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            os.close(control_r)
            os.close(control_w)
            self._release()
            raise SandboxError(f"cannot start a worker: {e}") from e
        os.close(control_w)
        self._control = control_r
        self._thread = threading.Thread(target=self._pump, name=f"sandbox-io-{self.proc.pid}", daemon=True)
        self._thread.start()
        return self

    def exited(self) -> bool:
        """Whether the worker has ended, without reaping it (its exit status stays for ``_reap``)."""
        if self._end is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the worker has imported its runner; SandboxError if it died instead."""
        timeout = self.config.startup_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.ready.is_set():
            if self.exited() or time.monotonic() > deadline:
                break
            self.ready.wait(0.05)
        if not self.ready.is_set():
            err = self.err.take()[-3000:]
            self.destroy()
            raise SandboxError(f"worker did not become ready (exit {self.proc.returncode}); stderr:\n{err}")

    # ------------------------------------------------------------------ run
    def run(self, job: Job, gate: Gate | None = None) -> list[EvalResult]:
        """Run ``job``; one result per stage attempted. Always destroys the worker.

        ``gate``, when given, sees each passed stage that has a successor before the worker
        may start it; a result it returns ends the job there, in that stage's place.
        """
        try:
            self.wait_ready()
            self.out.take(), self.err.take()  # import-time chatter is not the candidate's
            threading.Thread(target=self._send, args=(job,), daemon=True).start()
            return self._collect(job, gate)
        finally:
            self.destroy()

    def _send(self, job: Job) -> None:
        try:
            self.proc.stdin.write(job.to_json().encode() + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the worker died; _collect reports how

    def _ack(self) -> None:
        """Let the worker start its next stage: output up to here is attributed to the last one."""
        try:
            self.proc.stdin.write(b"next\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def _collect(self, job: Job, gate: Gate | None) -> list[EvalResult]:
        results: list[EvalResult] = []
        start = time.monotonic()
        for i, spec in enumerate(job.stages):
            msg = self._next_message(start + spec.timeout_s)
            now = time.monotonic()
            if msg is None or msg is _EOF:
                results.append(self._death_result(spec, now - start, timed_out=msg is None))
                return results
            result = self._stage_result(spec, msg, now - start)
            last = i + 1 == len(job.stages)
            stop = gate(result) if gate is not None and result.ok and not last else None
            results.append(result if stop is None else stop)
            if not result.ok or stop is not None:
                return results  # the worker, waiting for its go-ahead, is destroyed by run()
            if not last:
                self._ack()
            start = time.monotonic()  # the next stage's limit starts when it may start
        return results

    def _next_message(self, deadline: float):
        """The next stage message, ``_EOF`` if the worker ended, None at the deadline."""
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if msg is _EOF or msg.get("event") == "stage":
                return msg
            if msg.get("event") == "done":
                return _EOF

    def _stage_result(self, spec: StageSpec, msg: dict, wall_s: float) -> EvalResult:
        try:
            status = Status(msg.get("status"))
            metrics = msg.get("metrics") or {}
            if msg.get("stage") != spec.stage or not isinstance(metrics, dict):
                raise ValueError(f"expected stage {spec.stage!r}")
        except (ValueError, TypeError) as e:
            self.kill("garbled result")
            return EvalResult(
                spec.stage, Status.ERROR, f"the worker's result for stage {spec.stage} was garbled ({e})",
                stdout=msg.get("stdout", ""), stderr=msg.get("stderr", ""), wall_s=wall_s, isolation=str(self.isolation),
            )  # fmt: skip
        return EvalResult(
            stage=spec.stage,
            status=status,
            message=str(msg.get("message") or ""),
            metrics=metrics,
            stdout=msg.get("stdout", ""),
            stderr=msg.get("stderr", ""),
            exception=_text_or_none(msg.get("exception")),
            traceback=_text_or_none(msg.get("traceback")),
            wall_s=wall_s,
            isolation=str(self.isolation),
        )

    def _death_result(self, spec: StageSpec, wall_s: float, timed_out: bool) -> EvalResult:
        if timed_out:
            self.kill("timeout")
        end = self._reap(grace_s=5.0)
        stdout, stderr = self._drain_tails()
        status, message, exit_desc = classify_exit(
            ProcessEnd(
                end.returncode, end.killed_by_parent, end.reason, end.peak_rss_bytes,
                self.config.memory_limit_bytes, stderr,
            ),
            spec.stage,
            spec.timeout_s,
        )  # fmt: skip
        return EvalResult(
            spec.stage, status, message, stdout=stdout, stderr=stderr, wall_s=wall_s,
            isolation=str(self.isolation), exit=exit_desc,
        )  # fmt: skip

    def _drain_tails(self) -> tuple[str, str]:
        """After the worker died: let the reader reach end of file (bounded), then take the tails."""
        self._thread.join(timeout=2.0)
        self._stop.set()
        return self.out.take(), self.err.take()

    # ------------------------------------------------------------------ io
    def _pump(self) -> None:
        """Reader thread: tails of stdout/stderr, control messages, the output cap."""
        sel = selectors.DefaultSelector()
        streams = {self.proc.stdout.fileno(): self.out, self.proc.stderr.fileno(): self.err}
        for fd in (*streams, self._control):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        pending = bytearray()
        open_fds = {*streams, self._control}
        try:
            while open_fds and not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    fd = key.fd
                    if fd not in open_fds:
                        continue  # closed by _drain earlier in this batch
                    if fd == self._control:
                        self._drain(streams, open_fds, sel)  # output before the message belongs to its stage
                    data = self._read(fd)
                    if not data:
                        sel.unregister(fd)
                        open_fds.discard(fd)
                        if fd == self._control:
                            self.messages.put(_EOF)
                        continue
                    if fd == self._control:
                        pending += data
                        if len(pending) > MAX_CONTROL_BYTES:
                            self.kill("flooded the result channel")
                        *lines, rest = pending.split(b"\n")
                        pending = bytearray(rest)
                        for line in lines:
                            self._on_message(line)
                    else:
                        streams[fd].add(data)
                        if self.out.total + self.err.total > self.config.max_output_bytes:
                            self.kill(f"printed more than {self.config.max_output_bytes >> 20} MiB")
        finally:
            sel.close()
            if self._control in open_fds:
                self.messages.put(_EOF)

    @staticmethod
    def _read(fd: int) -> bytes | None:
        try:
            return os.read(fd, 1 << 16)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _drain(self, streams, open_fds, sel) -> None:
        for fd, tail in streams.items():
            while fd in open_fds:
                data = self._read(fd)
                if data is None:
                    break
                if not data:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    break
                tail.add(data)

    def _on_message(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError:
            msg = {"event": "stage", "status": "garbled", "stage": "?"}
        if msg.get("event") == "ready":
            self.ready_info = msg
            self.ready.set()
            return
        if msg.get("event") == "stage":
            msg["stdout"], msg["stderr"] = self.out.take(), self.err.take()
        self.messages.put(msg)

    # ------------------------------------------------------------------ teardown
    def kill(self, reason: str) -> None:
        """SIGKILL the worker's process group (bwrap takes its PID namespace with it)."""
        with self._lock:
            if self._killed_reason is None and self.proc is not None and self._end is None:
                self._killed_reason = reason
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, AttributeError):
                pass

    def _reap(self, grace_s: float = 0.0) -> ProcessEnd:
        """Wait for the worker (up to ``grace_s`` before killing it) and record how it ended."""
        if self._end is not None:
            return self._end
        deadline = time.monotonic() + grace_s
        pid, status, usage = 0, 0, None
        while True:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.proc.pid, 0
                break
            if pid or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if not pid:
            self.kill("did not exit")
            pid, status, usage = os.wait4(self.proc.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = rc
        if self.isolation.level == "bubblewrap" and 128 < rc <= 128 + 64:
            rc = -(rc - 128)  # bwrap reports a child killed by signal N as exit 128 + N
        peak = usage.ru_maxrss * 1024 if usage is not None else 0
        killed = self._killed_reason is not None
        reason = "timeout" if self._killed_reason == "timeout" else self._killed_reason
        self._end = ProcessEnd(rc, killed, reason, peak)
        return self._end

    def destroy(self) -> None:
        """Kill, reap and sweep everything this worker started; remove its workdir."""
        if self.proc is None:
            self._release()
            return
        if self._end is None:
            self.kill("cleanup")
        self._reap()
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._sweep()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.close(self._control)
        except (OSError, AttributeError):
            pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._release()

    def leftovers(self) -> set[int]:
        """Processes this worker started that still exist (zombies excluded)."""
        pids = set(procfs.pids_in_session(self.proc.pid)) | set(procfs.pids_with_env(f"SCALESEARCH_SANDBOX={self.marker}"))
        if self.uid is not None:
            pids |= set(procfs.pids_of_uid(self.uid))
        return pids

    def _sweep(self, timeout_s: float = 10.0) -> None:
        """SIGKILL whatever is left until nothing is: killed processes take a moment to exit
        (freeing a gigabyte is not instant), and a program may have started new sessions."""
        deadline = time.monotonic() + timeout_s
        while pids := self.leftovers():
            if self.uid is not None:
                sweep_uid(self.uid)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                warnings.warn(f"sandbox processes {sorted(pids)} survived SIGKILL for {timeout_s:g} s", RuntimeWarning)
                return
            time.sleep(0.005)

    def _release(self) -> None:
        if self.uid is not None and self.uids is not None:
            self.uids.release(self.uid)
            self.uid = None


def _text_or_none(value) -> str | None:
    return None if value is None else str(value)
