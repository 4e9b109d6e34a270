"""The ``vfinfer`` command line (click): the group in ``group``, its commands in ``run`` (run,
env), ``tools`` (export, train, eval, calibrate, domain, bench, synth, fp16, quantize, build),
``segment`` (segment, train-seg, export-seg, eval-seg) and ``serve``."""

from vfinfer.cli import run, segment, serve, tools  # noqa: F401  (register their commands)
from vfinfer.cli.group import main

__all__ = ["main"]
