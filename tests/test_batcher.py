"""The dynamic batcher on a real Pipeline: concurrent cells share one run_cases call, a bad
cell in a shared batch fails alone, a cancelled cell is skipped, stop drains the queue."""

import numpy as np
import pytest

from vfinfer.pipeline import Pipeline
from vfinfer.serve.batcher import Batcher, QueueFull
from vfinfer.util.images import read_case


@pytest.fixture(scope="module")
def pipe(model_dir):
    with Pipeline(model_dir, threads=2) as pipeline:
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


def test_concurrent_cells_share_one_engine_run(pipe, prepared):
    counting = CountingPipeline(pipe)
    batches = []
    batcher = Batcher(counting, max_wait_ms=500, max_batch=8,
                      on_batch=lambda *args: batches.append(args))
    try:
        futures = [batcher.submit(cell) for cell in prepared * 2]
        results = [f.result(30) for f in futures]
    finally:
        batcher.stop(30)
    assert counting.calls == [4] and batches[0][:2] == (4, 2 * sum(len(c.images)
                                                                  for c in prepared))
    for cell, result in zip(prepared * 2, results):
        alone = pipe.run_cases([cell])[0]
        assert result["karyotype"] == alone["karyotype"]
        assert [c["type"] for c in result["chromosomes"]] == \
            [c["type"] for c in alone["chromosomes"]]
        np.testing.assert_allclose([c["type_prob"] for c in result["chromosomes"]],
                                   [c["type_prob"] for c in alone["chromosomes"]], atol=1e-5)


def test_a_bad_cell_in_a_shared_batch_fails_alone(pipe, prepared):
    good = prepared[0]
    bad = type(good)("bad", good.images[:1], good.files[:1],
                     np.zeros((1, 1, 7, 7), np.float32), 0.0)  # wrong input size
    counting = CountingPipeline(pipe)
    batcher = Batcher(counting, max_wait_ms=500, max_batch=8)
    try:
        futures = [batcher.submit(c) for c in (good, bad, good)]
        outcomes = [f.exception(30) or f.result() for f in futures]
    finally:
        batcher.stop(30)
    assert counting.calls[0] == 3 and len(counting.calls) == 4  # shared, then one by one
    assert isinstance(outcomes[1], Exception)
    assert outcomes[0]["karyotype"] == outcomes[2]["karyotype"] == \
        pipe.run_cases([good])[0]["karyotype"]


def test_queue_bound_cancel_and_drain(pipe, prepared):
    counting = CountingPipeline(pipe)
    batcher = Batcher(counting, max_wait_ms=2000, max_batch=8, queue_size=2)
    try:
        first, second = batcher.submit(prepared[0]), batcher.submit(prepared[1])
        with pytest.raises(QueueFull):
            batcher.submit(prepared[0])
        assert batcher.depth == 2
        assert second.cancel()  # the request gave up before its batch started
    finally:
        batcher.stop(30)  # drains: the first cell is still answered
    assert first.result(1)["case"] == prepared[0].name and second.cancelled()
    assert counting.calls == [1] and batcher.depth == 0 and not batcher.alive
    with pytest.raises(RuntimeError):
        batcher.submit(prepared[0])
