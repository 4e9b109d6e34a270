"""``vfinfer serve``: the app of ``vfinfer.serve.app`` under uvicorn, on one socket.

Loopback by default; any other address needs a token. SIGTERM (or Ctrl-C) stops accepting
connections, lets the requests in flight finish (uvicorn's graceful shutdown, then the
batcher drains its queue), closes the pipeline and returns normally (exit code 0).
"""

import contextlib
import ipaddress
import signal
import socket
from pathlib import Path

from vfinfer.pipeline import Pipeline
from vfinfer.serve.limits import Limits

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path):
    """The tokens in a file: one bare token (named ``token``), or one ``NAME TOKEN`` per line
    (the name is what the review's audit trail records); ``{name: token}``. One-line errors:
    an unreadable file, a token under 16 characters, a name given twice."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the token file ({exc})") from None
    tokens = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise ValueError(f"{path}, line {number}: expected 'TOKEN' or 'NAME TOKEN'")
        name, token = fields if len(fields) == 2 else ("token", fields[0])
        if name in tokens:
            raise ValueError(f"{path}, line {number}: the name {name!r} is given twice")
        if len(token) < 16:
            raise ValueError(f"{path}, line {number}: the token must be at least 16 "
                             "characters (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe())')")
        tokens[name] = token
    if not tokens:
        raise ValueError(f"{path}: no token in the file")
    return tokens


def bind(host, port):
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)  # listening before "serving ..." is printed: early clients queue, not fail
    sock.set_inheritable(True)
    return sock


def serve(host="127.0.0.1", port=8000, token=None, limits=None, max_wait_ms=5.0,
          max_batch=8, echo=print, seg_model=None, allow_hosts=(), cases_dir=None,
          seg_precision="fp32", **pipeline_options):
    """Run the server until SIGTERM / Ctrl-C. ``pipeline_options`` go to ``Pipeline``;
    ``seg_model`` (a directory, "classical" or None: the demo) serves ``/v1/metaphase``, its
    ``seg_precision`` graph (fp32, or int8 once ``vfinfer quantize-seg`` checked it);
    ``allow_hosts``: Host names it answers to besides ``host`` and the loopback names;
    ``cases_dir``: the review page's cases (created if missing; None: no review page)."""
    import uvicorn

    from vfinfer.serve.app import create_app
    from vfinfer.serve.guards import allowed_hosts
    from vfinfer.serve.protocol import guarded_protocol

    if not is_loopback(host) and not token:
        raise ValueError(f"binding to {host} (not loopback) needs a token: --token-file FILE")
    limits = limits or Limits()
    if cases_dir is not None:
        try:
            Path(cases_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{cases_dir}: cannot use it as the cases directory ({exc})") \
                from None
    sock = bind(host, port)
    from vfinfer.segment.segmenter import Segmenter

    segmenter = Segmenter(seg_model, threads=pipeline_options.get("threads", 0),
                          precision=seg_precision)
    with sock, Pipeline(**pipeline_options) as pipeline, contextlib.closing(segmenter):
        app = create_app(pipeline, limits, token=token, max_wait_ms=max_wait_ms,
                         max_batch=max_batch, segmenter=segmenter,
                         hosts=allowed_hosts(host, allow_hosts), cases_dir=cases_dir)
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=int(limits.timeout_s) + 5,
                                http=guarded_protocol(limits.header_timeout_s,
                                                      limits.max_connections))
        server = uvicorn.Server(config)
        shown = f"[{host}]" if ":" in host else host
        echo(f"serving {pipeline.manifest.model_dir} ({pipeline.config.preset}), backend "
             f"{pipeline.backend.name}, on http://{shown}:{sock.getsockname()[1]} "
             f"(API page /docs{', token required' if token else ''})")
        if cases_dir is not None:
            echo(f"review page /review, cases in {cases_dir}")
        echo(f"dispatch {pipeline.dispatch_mode} ({pipeline.dispatch_reason})")
        # uvicorn re-raises the signal it caught once it has shut down; with this handler in
        # place that ends here, so the pipeline is closed and the exit code is 0
        # (and a second stop signal during the shutdown is ignored too); the handlers come back
        # once the pipeline is closed
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in STOP_SIGNALS}
        try:
            server.run(sockets=[sock])
        except BaseException:
            _restore(previous)
            raise
    echo("server stopped")
    _restore(previous)


def _restore(handlers):
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
