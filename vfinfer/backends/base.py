"""The backend interface: one runner per graph, created by a backend from a manifest.

A backend (ONNX Runtime now, TensorRT in ``trt.py``) turns the three graphs of a model
directory into ``GraphRunner`` objects. Tensor names and shapes come from the graphs; every
input is checked against them before running, so a wrong shape gives a clear message
instead of a failure deep inside the engine.
"""

from abc import ABC, abstractmethod


class BackendError(RuntimeError):
    """A backend that cannot be created or run; the message says what to do."""


class GraphRunner(ABC):
    """Runs one graph. ``infer`` must be safe to call from several threads at once."""

    #: {name: shape} of inputs and outputs; the batch axis is a string or None
    inputs: dict
    outputs: dict
    #: the largest batch one call accepts (None: unbounded)
    max_batch = None

    @abstractmethod
    def infer(self, feeds):
        """{input name: array} -> {output name: array}."""

    def check_feeds(self, feeds, graph_label):
        """Raise BackendError unless ``feeds`` match the graph's inputs (names and shapes)."""
        if set(feeds) != set(self.inputs):
            raise BackendError(
                f"{graph_label}: inputs {sorted(feeds)} do not match the graph's "
                f"{sorted(self.inputs)}"
            )
        batch = None
        for name, array in feeds.items():
            shape = self.inputs[name]
            if len(array.shape) != len(shape):
                raise BackendError(f"{graph_label}: input {name} has shape {array.shape}, "
                                   f"graph expects {shape}")
            for got, want in zip(array.shape[1:], shape[1:]):
                if isinstance(want, int) and want > 0 and got != want:
                    raise BackendError(f"{graph_label}: input {name} has shape {array.shape}, "
                                       f"graph expects {shape}")
            if batch is not None and array.shape[0] != batch:
                raise BackendError(f"{graph_label}: inputs disagree on the batch size")
            batch = array.shape[0]
        if self.max_batch is not None and batch > self.max_batch:
            raise BackendError(f"{graph_label}: batch {batch} exceeds the maximum "
                               f"{self.max_batch} this engine was built for")

    def close(self):  # noqa: B027 - runners without resources need no close
        """Release resources; safe to call twice."""


class Backend:
    """The three runners of one model plus a description of where they run."""

    def __init__(self, name, gnet, lnet, heads, details=None):
        self.name = name
        self.gnet = gnet
        self.lnet = lnet
        self.heads = heads
        self.details = details or {}

    @property
    def max_batch(self):
        limits = [r.max_batch for r in (self.gnet, self.lnet, self.heads) if r.max_batch]
        return min(limits) if limits else None

    def describe(self):
        return {"name": self.name, **self.details}

    def close(self):
        errors = []
        for runner in (self.gnet, self.lnet, self.heads):
            try:
                runner.close()
            except Exception as exc:  # keep closing the others, then report
                errors.append(exc)
        if errors:
            raise BackendError(f"closing the {self.name} backend failed: {errors[0]}")
