"""How the models share a small machine: with every call's media clock, and with each other.

Each call's 20 ms clock (``voicebot.media.transport``) runs on the event loop thread; the models (Whisper,
llama.cpp, Piper, the knowledge embedder) run on worker threads that keep every core busy for seconds at a time.
With several callers talking on two cores the kernel shares the cores fairly among all runnable threads, so a tick
that is due waits behind a model thread's time slice, and a woken loop thread then waits for the GIL held by a
model thread running Python.  Three cheap remedies:

* **Model threads run at a lower priority** (nice ``EVA_MODEL_NICE``, default 10).  On Linux each thread has its
  own nice value and a thread inherits it from the thread that creates it, so a worker pool made with
  :func:`background_thread` as its initializer, *and* the native pools its models create from that thread
  (CTranslate2's replica worker and its OpenMP team, llama.cpp's threads, ONNX Runtime's intra-op pool), all yield
  to the loop.  Nice only decides who runs first: an idle loop leaves the models every core, as before.  This is
  why the models are loaded on their worker threads, never on the loop's or a shared default executor's.
* **The GIL switch interval goes from 5 ms to 1 ms**: a loop thread woken by its timer waits at most that long for
  a model thread in Python code (sampling in speculative decoding, faster-whisper's segment loop).
* **NumPy's BLAS runs on its caller's thread** (one BLAS thread): OpenBLAS starts its pool when NumPy is imported,
  from the main thread, so its workers ran Whisper's feature extraction at the loop's priority, and they spin
  while they wait for work (measured: a transcription cost 85 CPU ticks with the pool, 62 without).

And the models with each other: **each model's threads are sized for a shared machine**.  llama.cpp, CTranslate2
and ONNX Runtime each split their work over a team of threads that meet at barriers and spin while they wait; with
two such teams on two cores, a descheduled thread leaves its partner spinning on a core the other team needed.
Measured on 2 cores, the LLM decoding while Whisper and Piper worked: all at 2 threads, 13.6 tokens/s and 0.76
transcribe+synthesize rounds/s; all at 1 thread, 27.0 tokens/s and 1.21 rounds/s; alone, 2 threads were faster
(43 vs 30 tokens/s).  So each model takes all the cores (up to 4) while it works alone, and its share while another
works: the LLM half of them (:func:`llm_threads`, checked before every forward pass), Whisper and Piper a third, at
least one thread (they cannot change a loaded model's threads, so each loads one instance per thread count and
picks per job: :func:`speech_threads_now`).  ``EVA_LLM_THREADS`` and ``EVA_SPEECH_THREADS`` fix the counts.

``bench/capacity.py --compare priority`` and ``--compare threads`` measure these against the old behaviour in one
run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from voicebot.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_NICE = 10
SWITCH_INTERVAL_S = 0.001
"""The GIL switch interval while priorities are on (CPython's default is 5 ms)."""
PYTHON_SWITCH_INTERVAL_S = 0.005

_state: dict[str, Any] = {"nice": DEFAULT_NICE, "blas": None, "speech_threads": 0, "llm_threads": 0}
"""The process-wide setting (one per process, like the nice values, the switch interval and the BLAS pool it
governs) and the BLAS limit in force."""


def configure(nice: int) -> None:
    """Set the nice value model threads made from now on take (0: leave them as they are) and the GIL switch
    interval.  Called once at startup, before any model loads (``EvaRuntime.start``)."""
    if not 0 <= nice <= 19:
        raise ConfigError(f"EVA_MODEL_NICE must be 0-19 (a nice value; 0 leaves the models as they are), "
                          f"not {nice}", field="model_nice")
    _state["nice"] = nice
    share(bool(nice))


def share(on: bool) -> None:
    """The process-wide half: the GIL switch interval and the one-thread BLAS on (``configure``), or as Python and
    NumPy start (also how ``bench/capacity.py --compare priority`` measures "before")."""
    sys.setswitchinterval(SWITCH_INTERVAL_S if on else PYTHON_SWITCH_INTERVAL_S)
    limit = _state["blas"]
    if on and limit is None:
        from threadpoolctl import threadpool_limits

        _state["blas"] = threadpool_limits(limits=1, user_api="blas")
    elif not on and limit is not None:
        limit.restore_original_limits()
        _state["blas"] = None


def model_nice() -> int:
    return int(_state["nice"])


def background_thread() -> None:
    """Executor initializer for model workers: lowers the calling thread (and what it will create) to the
    configured nice value.  Never raises: a platform without per-thread nice runs as before."""
    nice = _state["nice"]
    if not nice or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:  # only ever lowered: raising needs privileges
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("could not lower a model thread's priority: %s", exc)


def thread_nice() -> dict[int, int]:
    """Native thread id → nice value, for every thread of this process (Linux; empty elsewhere)."""
    result: dict[int, int] = {}
    for tid, fields in _thread_stats():
        result[tid] = int(fields[16])  # field 19 of /proc/<pid>/task/<tid>/stat, counted after the comm
    return result


def thread_cpu_ticks() -> dict[int, int]:
    """Native thread id → user + system CPU time in clock ticks, for every thread of this process."""
    return {tid: int(fields[11]) + int(fields[12]) for tid, fields in _thread_stats()}


def _thread_stats() -> list[tuple[int, list[str]]]:
    rows: list[tuple[int, list[str]]] = []
    root = Path("/proc/self/task")
    if not root.is_dir():
        return rows
    for entry in root.iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            # "tid (comm) state ppid ...": the comm may hold spaces and parentheses, so split after the last ")".
            rows.append((int(entry.name), stat[stat.rindex(")") + 2:].split()))
    return rows


def renice(threads: set[int], nice: int) -> None:
    """Set ``threads`` (native ids) to ``nice`` (raising a priority needs root); for ``bench/capacity.py``'s
    before/after comparison.  A thread that has ended is skipped."""
    for tid in threads:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


_STOP = float("inf")


class OrderedWorker:
    """One model thread that runs its jobs lowest key first (in submission order among equal keys), below the
    media clock (:func:`background_thread`).  Keys are what the owner orders by: a lane number (the knowledge
    embedder: queries before documents) or a deadline on the monotonic clock (Piper: the sentence a caller will
    hear first goes first, whichever call it belongs to)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Callable[[], Any] | None, Future[Any] | None]]
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._closing = threading.Lock()  # a job is queued before the stop mark or refused, never lost after it
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: float, func: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._closing:
            if self._closed:
                raise RuntimeError("the worker is closed")
            self._queue.put((key, next(self._order), lambda: func(*args), future))
        return future

    async def run(self, key: float, func: Callable[..., Any], /, *args: Any) -> Any:
        # A cancelled caller cancels its job if it has not started yet.
        return await asyncio.wrap_future(self.submit(key, func, *args))

    def close(self) -> None:
        """Cancel the jobs not started and end the thread after the one running.  Idempotent."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    _key, _order, _job, future = self._queue.get_nowait()
                except queue.Empty:
                    break
                if future is not None:
                    future.cancel()
            self._queue.put((_STOP, next(self._order), None, None))

    def _serve(self) -> None:
        background_thread()
        while True:
            _key, _order, job, future = self._queue.get()
            if job is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:  # delivered to the awaiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)


# ---------------------------------------------------------------------------------------------- threads per model
_working: dict[str, int] = {}
_working_lock = threading.Lock()


def configure_threads(speech_threads: int = 0, llm_threads: int = 0) -> None:
    """Fix the threads of the speech models (Whisper, Piper) and of the LLM; 0 derives them from the cores (see
    the module docstring).  Called at startup, before the models load."""
    counts = {"speech_threads": speech_threads, "llm_threads": llm_threads}
    for name, value in counts.items():  # all checked before any applies
        if not 0 <= value <= 64:
            raise ConfigError(f"EVA_{name.upper()} must be 0-64 (0: derived from the cores), not {value}",
                              field=name)
    _state.update(counts)


@functools.cache
def _cores() -> int:
    from voicebot.calls.admission import usable_cores

    return usable_cores()


def speech_threads(alone: bool = False) -> int:
    """Intra-op threads for Whisper and Piper: ``EVA_SPEECH_THREADS``; else, while no other model works
    (``alone``), all cores up to 4, and a third of them otherwise (at least 1, never more than alone)."""
    fixed = int(_state["speech_threads"])
    if fixed:
        return fixed
    most = min(_cores(), 4)
    return most if alone else min(most, max(1, _cores() // 3))


def speech_thread_choices() -> tuple[int, ...]:
    """The thread counts a speech model loads an instance for (one, or alone and shared when they differ)."""
    return tuple(dict.fromkeys((speech_threads(alone=True), speech_threads())))


def speech_threads_now(kind: str) -> int:
    """The thread count a speech model of ``kind`` should run this job with (:func:`speech_threads`)."""
    return speech_threads(alone=not others_working(kind))


def instance_now(kind: str, instances: Mapping[int, T]) -> T:
    """Of a speech model's instances by thread count (loaded for :func:`speech_thread_choices`), the one for this
    job; the first when there is one, or none for the count (the counts were fixed after loading)."""
    first = next(iter(instances.values()))
    return first if len(instances) == 1 else instances.get(speech_threads_now(kind), first)


def llm_threads() -> int:
    """Threads for the LLM's next forward pass: ``EVA_LLM_THREADS``, else all cores (up to 4) while no speech model
    works, half of them (at least 1) while one does."""
    fixed = int(_state["llm_threads"])
    if fixed:
        return fixed
    cores = min(_cores(), 4)
    return max(1, cores // 2) if others_working("llm") else cores


def others_working(kind: str) -> bool:
    """Whether another model works now besides the caller, itself marked ``kind`` (see :func:`working`): a model of
    another kind, or a second one of the same kind (the English and the multilingual Whisper run side by side)."""
    with _working_lock:
        return _working.get(kind, 0) > 1 or any(count for name, count in _working.items() if name != kind)


@contextlib.contextmanager
def working(kind: str) -> Iterator[None]:
    """Mark a model's work (``with working("stt"): ...``): the others size their threads by it."""
    with _working_lock:
        _working[kind] = _working.get(kind, 0) + 1
    try:
        yield
    finally:
        with _working_lock:
            _working[kind] -= 1
