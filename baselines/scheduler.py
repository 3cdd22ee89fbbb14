"""Where a study's runs execute: a local process per run, or Ray; and how they stop.

Runs never share a process (Warp's tape and a learner's torch state are per process): the local
backend (:func:`pool_map`) starts one ``spawn`` process per run, at most ``workers`` at a time; the
Ray backend (:func:`ray_map`) runs one task per run (``max_calls=1``), on a cluster or a local
instance. Both call the same function and hand its result (the run's files) to ``finished`` in the
driver, which stores them.

Stopping, the part that matters with runs of an hour:

- **Ctrl-C** (SIGINT to the study process alone, or to its process group as a terminal sends it):
  every run in flight is interrupted as Ctrl-C interrupts ``diffenvs optimize`` or ``train`` (its
  scratch directory is removed, nothing is stored), queued runs never start, a run that finished
  meanwhile is still stored, and the driver re-raises ``KeyboardInterrupt`` within
  :data:`STOP_GRACE_S` seconds (a run stuck in a native call is killed then and its scratch
  directory removed by the driver). ``diffenvs compare`` then exits with status 130.
- **The study process killed** (``kill``, a scheduler's SIGTERM, SIGKILL): each worker notices that
  its parent is gone, interrupts its run the same way and exits; one stuck in a native call removes
  its scratch directory after :data:`ORPHAN_GRACE_S` seconds and exits anyway.

The local backend is written here, not taken from :mod:`concurrent.futures`: a
``ProcessPoolExecutor(max_tasks_per_child=1)`` interrupted with queued work never lets its process
exit (CPython gh-119592), and :class:`multiprocessing.pool.Pool` waits forever for a worker that was
killed. One process per run, watched through its pipe, has neither problem.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diffenvs.config import ConfigError

logger = logging.getLogger(__name__)

Finished = Callable[[Any, "dict[str, bytes] | None", "BaseException | None"], None]
STOP_GRACE_S = 20.0
"""Seconds an interrupted run has to stop (and clean up) before the driver kills its process."""
ORPHAN_GRACE_S = 30.0
"""Seconds an orphaned worker's interrupted run has to stop before the process exits anyway."""
SCRATCH_PREFIX = "diffenvs-run-"
_SCRATCH: set[str] = set()  # this process's open run scratch directories (see scratch)


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A run's scratch directory (``$TMPDIR/diffenvs-run-<pid>-*``), removed on exit, and known to the
    orphan watcher (:func:`die_with_parent`) and, by its pid, to the driver that may have to kill it."""
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as path:
        _SCRATCH.add(path)
        try:
            yield path
        finally:
            _SCRATCH.discard(path)


def die_with_parent() -> None:
    """In a worker: when the study process ends while this worker runs (``kill``, a scheduler's
    SIGTERM: unlike Ctrl-C these reach the study process only), interrupt the run as Ctrl-C would
    (its scratch directory is removed) and exit, rather than train on for a result nobody stores.
    A run that has not stopped ``ORPHAN_GRACE_S`` seconds later (stuck in a native call that the
    interrupt must wait for) loses its scratch directory and the process exits anyway."""
    import _thread

    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch() -> None:
        parent.join()  # returns when the study process has ended
        _thread.interrupt_main()  # KeyboardInterrupt in the run: the same path as Ctrl-C
        time.sleep(ORPHAN_GRACE_S)
        # the run did not stop in time: the main thread is inside a long native call (a Warp module
        # compiling, a kernel) that the interrupt waits for; os._exit skips its cleanup, so do it here
        for path in list(_SCRATCH):
            shutil.rmtree(path, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, name="diffenvs-watch-study", daemon=True).start()


def _interrupt_once() -> None:
    """SIGINT raises ``KeyboardInterrupt`` once in this process, and is ignored after that: a
    terminal's Ctrl-C and the driver's forwarded SIGINT must not interrupt the run's own cleanup."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def _worker(fn: Callable[[Any], Any], job: Any, conn: Any) -> None:
    """A run's process: ``fn(job)``, its result or its error sent back through ``conn``."""
    _interrupt_once()
    die_with_parent()
    try:
        message = (True, fn(job))
    except BaseException as error:  # noqa: BLE001  (KeyboardInterrupt included: reported as the run's error)
        message = (False, error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}"))
    try:
        conn.send(message)
    except BrokenPipeError:  # the driver is gone
        pass


def _picklable(error: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001
        return False
    return True


def pool_map(fn: Callable[[Any], Any], todo: list[Any], workers: int, finished: Finished, *,
             address: str | None = None) -> None:
    """Run ``fn`` on every job of ``todo`` in its own ``spawn`` process, ``workers`` at a time, and call
    ``finished(job, result, error)`` in this process as each ends (see the module docstring)."""
    if address is not None:
        raise ConfigError("--address is an option of the ray backend")
    context = multiprocessing.get_context("spawn")
    queue = list(todo)
    running: dict[Any, tuple[Any, Any]] = {}  # receiving end -> (process, job)
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(fn, job, send), name=f"diffenvs-run-{len(running)}")
                process.start()
                send.close()  # the child's copy only: EOF here when it dies without an answer
                running[receive] = (process, job)
            for receive in multiprocessing.connection.wait(list(running)):
                process, job = running.pop(receive)
                ok, payload = _receive(receive, process)
                finished(job, payload if ok else None, None if ok else payload)
    except BaseException:
        _stop(running, finished)
        raise


def _receive(receive: Any, process: Any) -> tuple[bool, Any]:
    """A worker's answer (``(ok, result or error)``), or an error if it died without one."""
    try:
        message = receive.recv()
    except (EOFError, OSError):
        process.join()
        message = (False, RuntimeError(f"the run's process ended without a result (exit code {process.exitcode})"))
    finally:
        receive.close()
    process.join()
    return message


def _stop(running: dict[Any, tuple[Any, Any]], finished: Finished) -> None:
    """Interrupt every run in flight (SIGINT, as Ctrl-C), store any that finished meanwhile, and kill
    (then clean up after) those that have not stopped within :data:`STOP_GRACE_S`."""
    for process, _ in running.values():
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    while running and time.monotonic() < deadline:
        for receive in multiprocessing.connection.wait(list(running), timeout=max(deadline - time.monotonic(), 0.0)):
            process, job = running.pop(receive)
            ok, payload = _receive(receive, process)
            if ok:  # it finished before the interrupt reached it: keep it
                with contextlib.suppress(Exception):
                    finished(job, payload, None)
    for receive, (process, _) in running.items():
        logger.warning("run process %s did not stop within %.0f s: killed", process.pid, STOP_GRACE_S)
        process.kill()
        process.join()
        receive.close()
        for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{process.pid}-*"):
            shutil.rmtree(path, ignore_errors=True)
    running.clear()


def ray_map(fn: Callable[[Any], Any], todo: list[Any], workers: int, finished: Finished, *,
            address: str | None = None) -> None:
    """Ray tasks (one CPU each, a fresh worker process per run: ``max_calls=1``)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'diffenvs[ray]'") from None

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_calls=1)(_apply)  # ray takes functions, not partials
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[remote.remote(fn, job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                finished(job, ray.get(ready[0]), None)
            except ray.exceptions.RayTaskError as error:
                finished(job, None, error.as_instanceof_cause())
    finally:
        if started:
            ray.shutdown()


def _apply(fn: Callable[[Any], Any], job: Any) -> Any:
    return fn(job)


BACKENDS: dict[str, Callable[..., None]] = {"pool": pool_map, "ray": ray_map}

__all__ = ["BACKENDS", "ORPHAN_GRACE_S", "STOP_GRACE_S", "die_with_parent", "pool_map", "ray_map", "scratch"]
