"""The ``vfinfer`` command line (click): the group in ``group``, its commands in ``run`` (run,
report, env), ``tools`` (export, train, eval, calibrate, domain, bench, synth, fp16, quantize,
build), ``segment`` (segment, train-seg, export-seg, eval-seg), ``structural``
(train-structural, export-structural) and ``serve``."""

from vfinfer.cli import run, segment, serve, structural, tools  # noqa: F401  (register their commands)
from vfinfer.cli.group import main

__all__ = ["main"]
