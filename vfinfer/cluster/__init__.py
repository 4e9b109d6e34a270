"""Many machines: ``vfinfer run --ray`` (``ray_run``; the ``ray`` extra). Ray is imported only
when a run asks for it."""
