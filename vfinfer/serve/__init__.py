"""``vfinfer serve``: the pipeline behind HTTP (the ``serve`` extra: FastAPI, uvicorn).

``app`` (the endpoints), ``batcher`` (dynamic batching over one Pipeline), ``limits`` (what a
request may hold, the JSON errors), ``metrics`` (Prometheus), ``server`` (uvicorn, sockets,
signals). Nothing here is imported by ``import vfinfer`` or ``vfinfer run``.
"""
