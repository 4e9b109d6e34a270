"""``vfinfer serve``: the HTTP server (the ``serve`` extra)."""

from pathlib import Path

import click

from vfinfer.cli.group import main
from vfinfer.cli.options import (
    dispatch_option,
    fail,
    model_options,
    one_line_errors,
    seg_model_option,
    seg_precision_option,
    usage,
    verdict_options,
)


def _import_server():
    try:
        from vfinfer.serve import server
        from vfinfer.serve.limits import Limits
    except ImportError as exc:
        fail(f"vfinfer serve needs the serve extra ({exc.name} is missing): "
             "pip install -e '.[serve]'")
    return server, Limits


def limit_options(command):
    """What one request may hold and how long it may take (docs/serving.md, Limits)."""
    count = click.IntRange(min=1)
    seconds = click.FloatRange(min=0.1)
    options = [
        click.option("--queue", "queue_size", default=64, show_default=True, type=count,
                     help="Cells waiting before requests get 503."),
        click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=seconds,
                     help="Seconds per request before 504."),
        click.option("--max-body-mb", default=64.0, show_default=True,
                     type=click.FloatRange(min=0.001), help="Largest request body (413 above)."),
        click.option("--max-images", default=200, show_default=True, type=count,
                     help="Most images per cell."),
        click.option("--max-pixels", default=16_000_000, show_default=True, type=count,
                     help="Most pixels per image (read from its header)."),
        click.option("--max-request-pixels", default=32_000_000, show_default=True, type=count,
                     help="Most pixels per request, all images together."),
        click.option("--max-inflight-mb", default=512, show_default=True, type=count,
                     help="Decoded image memory of all requests together (503 above)."),
        click.option("--body-timeout", default=30.0, show_default=True, type=seconds,
                     help="Seconds for a request's body to arrive (408 after)."),
        click.option("--header-timeout", default=10.0, show_default=True, type=seconds,
                     help="Seconds for a request's line and headers to arrive (connection "
                          "closed)."),
        click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
                     help="A Host name the server answers to besides --host and the loopback "
                          "names (repeatable; needed behind a reverse proxy or on 0.0.0.0)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@model_options()
@dispatch_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token-file.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: a free one, printed at start).")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the token clients send as 'Authorization: Bearer <token>' "
                   "(health endpoints stay open for probes).")
@click.option("--cases", "cases_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None,
              help="Directory of reviewable cases (vfinfer run --keep-images output): serves "
                   "the review page /review and /v1/cases, and keeps uploaded cases there.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long the dynamic batcher gathers concurrent cells.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most cells per engine run.")
@limit_options
@verdict_options
@seg_model_option
@seg_precision_option
@one_line_errors
def serve(model_dir, backend, precision, threads, batch_size, dispatch_mode, host, port,
          token_file, cases_dir, max_wait_ms, max_batch, queue_size, timeout_s, max_body_mb,
          max_images, max_pixels, max_request_pixels, max_inflight_mb, body_timeout,
          header_timeout, allow_hosts,
          background, force_karyotype, seg_model, seg_precision):
    """Serve the model over HTTP: POST /v1/cells, /v1/cells:batch, /v1/metaphase, health,
    /metrics; with --cases, the review page /review."""
    server, limits_class = _import_server()
    if not server.is_loopback(host) and token_file is None:
        usage(f"--host {host} is not a loopback address: give --token-file so that only "
              "clients with the token are served")
    token = server.read_token(token_file) if token_file is not None else None
    limits = limits_class(max_body_bytes=int(max_body_mb * (1 << 20)), max_images=max_images,
                          max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                          max_inflight_mb=max_inflight_mb, body_timeout_s=body_timeout,
                          header_timeout_s=header_timeout,
                          queue_size=queue_size, timeout_s=timeout_s)
    server.serve(host=host, port=port, token=token, limits=limits, max_wait_ms=max_wait_ms,
                 max_batch=max_batch, echo=click.echo, allow_hosts=allow_hosts,
                 cases_dir=cases_dir,
                 model_dir=model_dir, backend=backend, threads=threads,
                 batch_size=batch_size, dispatch_mode=dispatch_mode, precision=precision,
                 background=background, force_karyotype=force_karyotype,
                 seg_model=seg_model, seg_precision=seg_precision)
