"""`clipkit serve`: the HTTP service (zero-shot or a trained probe) with its web page."""
from __future__ import annotations

import ipaddress
from typing import Any, Optional

import click

from ..errors import ConfigError
from .common import build_config, model_options, prompt_options


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_mode(mode: Optional[str], head: Optional[str]) -> Optional[str]:
    if head and mode == "zeroshot":
        raise ConfigError(f"--mode zeroshot conflicts with --head {head}; drop --head, or use --mode probe")
    return "probe" if head else mode


@click.command()
@model_options
@prompt_options
@click.option("--mode", type=click.Choice(["zeroshot", "probe"]), default=None,
              help="zeroshot: score the labels with prompts. probe: serve a trained head (needs --head). "
                   "[default: probe when --head is given, else zeroshot]")
@click.option("--head", default=None, help="A trained probe head: a folder, runs:/RUN_ID/head or models:/NAME/VERSION.")
@click.option("--host", default=None, help="Interface to bind. [default: 127.0.0.1; use 0.0.0.0 only behind "
              "a firewall or with --api-key]")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="TCP port. [default: 8000]")
@click.option("--api-key", envvar="CLIPKIT_API_KEY", default=None, show_envvar=True,
              help="Require this key in X-API-Key (or Authorization: Bearer) on /v1/*.")
@click.option("--max-batch-size", type=click.IntRange(1), default=None, help="Images per model call. [default: 32]")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=None,
              help="How long a batch waits for more images, while another request in flight could join it "
              "(a lone request never waits). [default: 5]")
@click.option("--micro-batching/--no-micro-batching", default=None,
              help="Gather concurrent requests into one model call. [default: on]")
@click.option("--queue-size", type=click.IntRange(1), default=None,
              help="Images waiting for the model before new requests get 503. [default: 256]")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds before a request is answered 504. [default: 30]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log each request.")
def serve(config_path: Optional[str], mode: Optional[str], head: Optional[str], host: Optional[str],
          port: Optional[int], api_key: Optional[str], max_batch_size: Optional[int], max_wait_ms: Optional[float],
          micro_batching: Optional[bool], queue_size: Optional[int], request_timeout: Optional[float],
          log_level: str, access_log: bool, **flags: Any) -> None:
    """Serve the zero-shot classifier or a trained probe over HTTP, with a web page at /.

    \b
    Examples:
      clipkit serve --config configs/demo.yaml                  # http://127.0.0.1:8000/
      clipkit serve --config configs/demo.yaml --head out/head  # a trained probe
      CLIPKIT_API_KEY=$(openssl rand -hex 16) clipkit serve --host 0.0.0.0 --config configs/demo.yaml
      curl -F files=@photo.jpg -F labels=$'a cat\\na dog' http://127.0.0.1:8000/v1/predict

    \b
    Endpoints: POST /v1/predict, POST /v1/embed, GET /v1/info, GET /healthz, GET /readyz, GET /metrics,
    API docs at /docs. Limits (upload bytes, pixels, files, labels) live in the config's serve: section.
    SIGTERM: /readyz turns 503, requests in flight finish, then the process exits 0.
    """
    from ..serve.server import run_server

    cfg = build_config(config_path, **flags, **{
        "serve.mode": _resolve_mode(mode, head), "serve.head": head, "serve.host": host, "serve.port": port,
        "serve.api_key": api_key, "serve.max_batch_size": max_batch_size, "serve.max_wait_ms": max_wait_ms,
        "serve.micro_batching": micro_batching, "serve.queue_size": queue_size,
        "serve.request_timeout_s": request_timeout})
    if cfg.serve.mode == "zeroshot":  # fail in milliseconds on bad labels or templates, not after the model load
        from ..prompts import resolve_labels, resolve_templates

        resolve_labels(cfg.prompts)
        resolve_templates(cfg.prompts)
    elif not cfg.serve.head:
        raise ConfigError("--mode probe needs a head; pass --head PATH|runs:/RUN_ID/head|models:/NAME/VERSION")
    if not is_loopback(cfg.serve.host) and not cfg.serve.api_key:
        click.secho(f"WARNING: binding {cfg.serve.host} without an API key: anyone who can reach this port can "
                    "use the model. Set --api-key or CLIPKIT_API_KEY, or bind 127.0.0.1.", fg="red", bold=True,
                    err=True)
    run_server(cfg, log_level=log_level, access_log=access_log)
