"""Dynamic batching: cells from concurrent requests share engine batches.

Requests hand in prepared cells (``Pipeline.prepare``: decoded and preprocessed on the
request's own thread); one engine thread takes the first waiting cell, gathers whatever else
arrives within ``max_wait_ms`` (up to ``max_batch`` cells) and runs them as one
``Pipeline.run_cases`` call, as Triton's dynamic batcher does. A shared batch that fails is
run again cell by cell (``vfinfer.io.runner.infer_cases``), so one bad cell fails alone.

The queue is bounded: ``submit`` raises ``QueueFull`` when ``queue_size`` cells are already
waiting (the server answers 503). A request that gives up (its timeout) cancels its cell,
which is then skipped if the engines have not taken it yet.
"""

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from vfinfer.io.runner import infer_cases
from vfinfer.pipeline import PreparedCase


class QueueFull(Exception):
    """The batcher holds ``queue_size`` waiting cells already."""


@dataclass
class Job:
    prepared: PreparedCase
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)

    @property
    def name(self):
        return self.prepared.name


_STOP = object()


class Batcher:
    """One engine thread over a shared ``Pipeline``; ``submit`` is safe from any thread."""

    def __init__(self, pipeline, max_wait_ms=5.0, max_batch=8, queue_size=64, on_batch=None,
                 clock=time.perf_counter):
        """``clock`` (seconds, as ``time.perf_counter``) is what the gathering window is
        measured on: the window closes once ``clock()`` has passed its first cell's reading
        plus ``max_wait_ms``. The engine thread waits for the queue at most until then and
        reads the clock again after each wait, so a clock that stands still keeps the window
        open (until the batch is full or ``stop``), and moving it past the deadline closes the
        window at the end of the wait in progress; tests drive batching that way, without
        real time windows. ``on_batch`` seconds are real engine time in any case."""
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be at least 1, max_wait_ms >= 0")
        self.pipeline = pipeline
        self._clock = clock
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch, self.queue_size = max_batch, queue_size
        self.on_batch = on_batch  # called with (n_cells, n_chromosomes, seconds) per run
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._taken = 0  # jobs taken off the queue for the batch being gathered
        self._thread = threading.Thread(target=self._loop, name="vfinfer-batcher", daemon=True)
        self._stopped = False
        self._thread.start()

    @property
    def depth(self):
        """Cells accepted whose engine batch has not started (gathered ones included)."""
        return self._waiting

    @property
    def alive(self):
        return self._thread.is_alive() and not self._stopped

    def submit(self, prepared):
        """Queue one prepared cell; returns a Future of its result dict."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the server is shutting down")
            if self._waiting >= self.queue_size:
                raise QueueFull(f"{self._waiting} cells are waiting (queue size "
                                f"{self.queue_size})")
            self._waiting += 1
        job = Job(prepared)
        self._queue.put(job)
        return job.future

    def stop(self, timeout=None):
        """Finish the cells already queued, then end the engine thread."""
        with self._lock:
            self._stopped = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------------
    def _take(self, block_until=None):
        """The next job (None when nothing came before ``block_until`` on the clock, _STOP at
        the end)."""
        while True:
            try:
                if block_until is None:
                    item = self._queue.get()
                else:
                    item = self._queue.get(timeout=max(0.0, block_until - self._clock()))
                break
            except queue.Empty:
                if self._clock() >= block_until:
                    return None
        if item is not _STOP:
            self._taken += 1
        return item

    def _gather(self):
        """The jobs gathered for one engine run and whether the stop mark was seen."""
        jobs, stop = [], False
        first = self._take()
        if first is _STOP:
            return jobs, True
        deadline = self._clock() + self.max_wait
        item = first
        while True:
            if item is _STOP:
                stop = True
                break
            if item is not None:
                jobs.append(item)
            if len(jobs) >= self.max_batch or item is None:
                break
            item = self._take(deadline)
        return jobs, stop

    def _loop(self):
        stop = False
        while not stop:
            self._taken = 0
            jobs, stop = self._gather()
            if stop:  # drain what is left without waiting for more
                jobs += self._drain()
            with self._lock:  # gathered cells count as waiting until the engines start
                self._waiting -= self._taken
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _drain(self):
        jobs = []
        while True:
            item = self._take(self._clock())
            if item is None:
                return jobs
            if item is not _STOP:
                jobs.append(item)

    def _run(self, jobs):
        started = time.perf_counter()
        try:
            outcomes = infer_cases(self.pipeline, jobs)
        except BaseException as exc:  # never leave a request hanging
            outcomes = [(job, exc) for job in jobs]
        for job, outcome in outcomes:
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        if self.on_batch is not None:
            self.on_batch(len(jobs), sum(len(j.prepared.images) for j in jobs),
                          time.perf_counter() - started)
