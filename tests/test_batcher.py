"""The dynamic batcher on a real Pipeline (the bundled demo model: the batcher does not care
which model it runs, and it needs no export): concurrent cells share one run_cases call, a bad
cell in a shared batch fails alone, a cancelled cell is skipped, stop drains the queue.

The gathering window runs on a ``StillClock`` the test moves by hand, never on real time: a
window stays open until the test moves the clock past it (or the batch is full, or the
batcher stops), so which cells share a batch does not depend on how busy the machine is."""

import threading

import numpy as np
import pytest

from vfinfer.model.manifest import demo_model_dir
from vfinfer.pipeline import Pipeline
from vfinfer.serve.batcher import Batcher, QueueFull
from vfinfer.util.images import read_case

WAIT = 30  # seconds a test waits for an answer before it fails (none should take that long)
# The window, measured on the StillClock; in real time it only sets how often the engine
# thread looks at the clock again while a window is open.
WINDOW_MS = 100


@pytest.fixture(scope="module")
def pipe():
    with Pipeline(demo_model_dir(), threads=2) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def prepared(pipe, synth_root):
    cells = []
    for case in sorted(p for p in synth_root.iterdir() if p.is_dir()):
        images, paths, _ = read_case(case)
        cells.append(pipe.prepare(case.name, images, [p.name for p in paths]))
    return cells


class CountingPipeline:
    """The real pipeline, counting the cells of each run_cases call."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []

    def run_cases(self, cases):
        self.calls.append(len(cases))
        return self.pipeline.run_cases(cases)


class StillClock:
    """The batcher's clock: it moves only when the test calls ``advance``. ``opened`` is set
    when the engine thread reads it, which it first does on taking the first cell of a batch
    (its window opens then); clear it before a new batch to wait for that one."""

    def __init__(self):
        self.now = 0.0
        self.opened = threading.Event()

    def __call__(self):
        self.opened.set()
        return self.now

    def advance(self, seconds):
        self.now += seconds

    def close_window(self, seconds):
        """Once a window is open, move past it: the cells queued so far are its batch."""
        assert self.opened.wait(WAIT), "the batcher never took a cell"
        self.advance(seconds)


def test_concurrent_cells_share_one_engine_run(pipe, prepared):
    counting, clock = CountingPipeline(pipe), StillClock()
    batches = []
    batcher = Batcher(counting, max_wait_ms=WINDOW_MS, max_batch=8, clock=clock,
                      on_batch=lambda *args: batches.append(args))
    try:
        futures = [batcher.submit(cell) for cell in prepared * 2]
        clock.close_window(0.2)
        results = [f.result(WAIT) for f in futures]
    finally:
        batcher.stop(WAIT)
    assert counting.calls == [4] and batches[0][:2] == (4, 2 * sum(len(c.images)
                                                                  for c in prepared))
    for cell, result in zip(prepared * 2, results):
        alone = pipe.run_cases([cell])[0]
        assert result["karyotype"] == alone["karyotype"]
        assert [c["type"] for c in result["chromosomes"]] == \
            [c["type"] for c in alone["chromosomes"]]
        np.testing.assert_allclose([c["type_prob"] for c in result["chromosomes"]],
                                   [c["type_prob"] for c in alone["chromosomes"]], atol=1e-5)


def test_the_window_takes_late_cells_until_the_clock_passes_it(pipe, prepared):
    counting, clock = CountingPipeline(pipe), StillClock()
    batcher = Batcher(counting, max_wait_ms=WINDOW_MS, max_batch=8, clock=clock)
    try:
        first = batcher.submit(prepared[0])
        clock.close_window(0.08)  # 80 ms into the 100 ms window: still open
        second = batcher.submit(prepared[1])
        clock.advance(0.04)  # past it: the batch is the two cells
        first.result(WAIT)
        second.result(WAIT)
        clock.opened.clear()
        third = batcher.submit(prepared[0])  # a window of its own
        clock.close_window(0.2)
        assert third.result(WAIT)["case"] == prepared[0].name
    finally:
        batcher.stop(WAIT)
    assert counting.calls == [2, 1]


def test_a_bad_cell_in_a_shared_batch_fails_alone(pipe, prepared):
    good = prepared[0]
    bad = type(good)("bad", good.images[:1], good.files[:1],
                     np.zeros((1, 1, 7, 7), np.float32), 0.0)  # wrong input size
    counting, clock = CountingPipeline(pipe), StillClock()
    batcher = Batcher(counting, max_wait_ms=WINDOW_MS, max_batch=8, clock=clock)
    try:
        futures = [batcher.submit(c) for c in (good, bad, good)]
        clock.close_window(0.2)
        outcomes = [f.exception(WAIT) or f.result() for f in futures]
    finally:
        batcher.stop(WAIT)
    assert counting.calls[0] == 3 and len(counting.calls) == 4  # shared, then one by one
    assert isinstance(outcomes[1], Exception)
    assert outcomes[0]["karyotype"] == outcomes[2]["karyotype"] == \
        pipe.run_cases([good])[0]["karyotype"]


def test_queue_bound_cancel_and_drain(pipe, prepared):
    """The clock never moves: the first cell's window stays open until ``stop``."""
    counting = CountingPipeline(pipe)
    batcher = Batcher(counting, max_wait_ms=WINDOW_MS, max_batch=8, queue_size=2,
                      clock=StillClock())
    try:
        first, second = batcher.submit(prepared[0]), batcher.submit(prepared[1])
        with pytest.raises(QueueFull):
            batcher.submit(prepared[0])
        assert batcher.depth == 2
        assert second.cancel()  # the request gave up before its batch started
    finally:
        batcher.stop(WAIT)  # drains: the first cell is still answered
    assert first.result(1)["case"] == prepared[0].name and second.cancelled()
    assert counting.calls == [1] and batcher.depth == 0 and not batcher.alive
    with pytest.raises(RuntimeError):
        batcher.submit(prepared[0])


def test_a_full_batch_does_not_wait_for_its_window(pipe, prepared):
    """The clock never moves, so only ``max_batch`` can close these windows."""
    counting = CountingPipeline(pipe)
    batcher = Batcher(counting, max_wait_ms=WINDOW_MS, max_batch=2, clock=StillClock())
    try:
        futures = [batcher.submit(cell) for cell in prepared * 2]
        results = [f.result(WAIT) for f in futures]
    finally:
        batcher.stop(WAIT)
    assert counting.calls == [2, 2]
    assert [r["case"] for r in results] == [c.name for c in prepared * 2]
