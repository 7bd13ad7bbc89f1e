"""The code that runs inside the sandbox: set limits, drop privileges, import JAX, wait, run one job.

Started by ``evaluator.supervisor.WorkerProcess`` as ``python -I -c ...`` with
one JSON argument. In order: resource limits, CPU affinity, parent-death
signal, uid drop (when root), working directory; then the runner
(``proxy_models.run`` by default) is imported and warmed up *before* any
program arrives, so a candidate pays none of JAX's import time; then the
worker reports ready on the control pipe, reads one ``Job`` from stdin, runs
its stages, reports each, and exits. It never runs a second job.

The stage functions come from the runner module: ``smoke(source) -> dict`` and
``train_run(source, n_params, n_tokens, seed=, corpus=, should_stop=) -> dict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from evaluator.early_stopping import make_should_stop
from evaluator.protocol import Job, StageSpec, encode, fingerprint_map
from evaluator.result import OOM_MARKERS, Status, tail

CANDIDATE_FILE = "<candidate>"  # the filename proxy_models.program.load_program compiles under
RUN_STATUS = {"ok": Status.OK, "diverged": Status.DIVERGED, "pruned": Status.PRUNED}


def main(arg_json: str) -> None:
    args = json.loads(arg_json)
    control = os.fdopen(args["control_fd"], "wb", buffering=0)
    limits = args["limits"]
    _apply_limits(limits)
    if args.get("cores") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, args["cores"])
    if args.get("pdeathsig"):
        _die_with_parent()
    if args.get("uid") is not None:
        os.setgroups([])
        os.setgid(args["uid"])
        os.setuid(args["uid"])
    os.chdir(args["workdir"])
    os.umask(0o077)
    t0 = time.perf_counter()
    runner = _import_runner(args["runner"])
    _warm_up(runner, args.get("corpus"))
    _send(control, {"event": "ready", "import_s": time.perf_counter() - t0, "pid": os.getpid(), "uid": os.getuid()})

    line = sys.stdin.buffer.readline()
    if not line:
        os._exit(0)  # the pool was shut down before this spare got a job
    job = Job.from_json(line.decode())
    _limit_cpu(job.total_timeout_s, limits.get("cpu_slack", 30.0))
    known = fingerprint_map(job.known_fingerprints)
    for i, spec in enumerate(job.stages):
        message = run_stage(runner, job, spec, known, args.get("corpus"))
        _flush_std()
        _send(control, message)
        if message["status"] != Status.OK.value:
            break
        if i + 1 < len(job.stages):
            sys.stdin.buffer.readline()  # the parent has taken this stage's output: go on
    _send(control, {"event": "done"})
    _flush_std()
    os._exit(0)  # skip interpreter teardown: a candidate's threads or atexit hooks cannot delay it


def run_stage(runner, job: Job, spec: StageSpec, known: dict[str, str], corpus: str | None) -> dict[str, Any]:
    """Run one stage; every outcome, exceptions included, becomes a message dict."""
    t0 = time.perf_counter()
    msg: dict[str, Any] = {"event": "stage", "stage": spec.stage, "status": Status.OK.value, "message": ""}
    try:
        if spec.kind == "smoke":
            metrics = dict(runner.smoke(job.source))
            fp = metrics.get("fingerprint")
            if fp is not None and fp in known:
                metrics["duplicate_of"] = known[fp]
                msg["status"] = Status.DUPLICATE.value
                msg["message"] = f"same computation and strategy as {known[fp]} (fingerprint {fp}): not trained again"
        else:
            stopper = make_should_stop(spec.early_stopping, spec.n_tokens)
            context = {"seq_len": spec.seq_len} if spec.seq_len else {}  # runners without the argument keep working
            metrics = dict(runner.train_run(job.source, spec.n_params, spec.n_tokens, seed=spec.seed, corpus=corpus,
                                            should_stop=stopper, **context))
            status = RUN_STATUS.get(str(metrics.get("status")), Status.ERROR)
            msg["status"] = status.value
            msg["message"] = str(metrics.get("message") or "")
            if status is Status.PRUNED and stopper is not None and stopper.decision:
                msg["message"] = f"pruned {stopper.decision}"
                metrics["prune_reason"] = stopper.decision
    except BaseException as e:  # noqa: BLE001 - the candidate's failures are results
        metrics = {}
        msg.update(classify_exception(e, spec.stage))
    metrics["runner_s"] = time.perf_counter() - t0
    msg["metrics"] = metrics
    return msg


def classify_exception(e: BaseException, stage: str) -> dict[str, Any]:
    """Status, message and traceback for an exception a stage raised.

    Contract violations the harness detects (``ProgramError``, a ``ValueError``
    raised outside the candidate's own code, a syntax error) are ``invalid``;
    non-finite losses or parameters are ``diverged``; allocation failures are
    ``out_of_memory``; anything else, including exceptions the candidate's own
    code raises, is ``error``.
    """
    text = f"{type(e).__name__}: {e}"
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if f.filename == CANDIDATE_FILE]
    raised_by_candidate = bool(frames) and frames[-1].filename == CANDIDATE_FILE
    where = f" (line {own[-1].lineno} of the program)" if own else ""
    if isinstance(e, SystemExit):
        status, what = Status.ERROR, f"the program called sys.exit({e.code!r})"
    elif isinstance(e, MemoryError) or any(m in str(e) for m in OOM_MARKERS[:3]):
        status, what = Status.OUT_OF_MEMORY, f"out of memory: {text}"
    elif isinstance(e, SyntaxError) or type(e).__name__ == "ProgramError":
        status, what = Status.INVALID, text
    elif isinstance(e, ValueError) and not raised_by_candidate:
        finite = "finite" in str(e) or "nan" in str(e).lower()
        status, what = (Status.DIVERGED if finite else Status.INVALID), text
    else:
        status, what = Status.ERROR, text
    return {
        "status": status.value,
        "message": tail(f"{stage}: {what}{where}", 2000),
        "exception": tail(text, 4000),
        "traceback": tail("".join(traceback.format_exception(e)), 20 * 1024),
    }


def _apply_limits(limits: dict[str, Any]) -> None:
    def cap(which: int, value) -> None:
        if value is not None:
            value = int(value)
            resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, limits.get("as"))
    cap(resource.RLIMIT_FSIZE, limits.get("fsize"))
    cap(resource.RLIMIT_NOFILE, limits.get("nofile"))
    cap(resource.RLIMIT_NPROC, limits.get("nproc"))
    cap(resource.RLIMIT_CORE, 0)
    cpu = int(limits.get("cpu") or 0)
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))


def _limit_cpu(total_timeout_s: float, slack_s: float) -> None:
    """Once the job is known: CPU seconds for all its stages on all our cores, then SIGXCPU."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    soft = int(used.ru_utime + used.ru_stime + total_timeout_s * cores + slack_s) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    new_hard = soft + 5 if hard == resource.RLIM_INFINITY else min(hard, soft + 5)
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))


def _die_with_parent() -> None:
    """Without bubblewrap: SIGKILL this worker when the evaluator dies (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _import_runner(name: str):
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("scalesearch_runner", name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def _warm_up(runner, corpus: str | None) -> None:
    """Pay import and backend start-up now, before any candidate's clock starts."""
    if hasattr(runner, "warmup"):
        runner.warmup(corpus)
        return
    if getattr(runner, "__name__", "") != "proxy_models.run":
        return
    import functools  # noqa: F401 - the modules programs may import, loaded ahead of them
    import math  # noqa: F401

    import jax
    import jax.numpy as jnp
    import optax  # noqa: F401

    import proxy_models.layers  # noqa: F401

    jax.jit(lambda x: x + 1)(jnp.zeros(())).block_until_ready()  # starts the XLA backend
    if not hasattr(runner, "load_corpus"):
        return
    loaded = runner.load_corpus(corpus)
    original = runner.load_corpus
    # train_run loads the corpus on every call; the worker has it already (read-only memmap).
    runner.load_corpus = lambda source=None, **kw: loaded if source == corpus and not kw else original(source, **kw)


def _send(control, message: dict[str, Any]) -> None:
    control.write(encode(_to_plain(message)))


def _to_plain(obj):
    """numpy scalars and arrays to Python numbers and lists, recursively, for JSON."""
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return obj.tolist()
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes, int, float)):
        return obj.item()
    return obj


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a candidate may have closed or replaced them
            pass
