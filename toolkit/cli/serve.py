"""`clipkit serve`: the HTTP service (zero-shot or a trained probe) with its web page."""
from __future__ import annotations

import ipaddress
import os
from typing import Any, Optional

import click

from toolkit.cli.common import build_config, head_options, model_options, prompt_options


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key: Optional[str], api_key_file: Optional[str]) -> Optional[str]:
    """The key from --api-key-file, else CLIPKIT_API_KEY / --api-key (warning when it was typed on the command
    line, where `ps` shows it to every user of the machine)."""
    from click.core import ParameterSource

    from toolkit.errors import ConfigError

    on_command_line = click.get_current_context().get_parameter_source("api_key") is ParameterSource.COMMANDLINE
    env_key = os.environ.get("CLIPKIT_API_KEY")
    if api_key_file is None and not on_command_line and env_key is not None and not env_key.strip():
        # click reads an empty variable as unset: authentication would be off without a word
        raise ConfigError("CLIPKIT_API_KEY is set but empty; put the key in it, or unset it to serve without a key")
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty; give a non-empty key (or none, to serve without a key)")
    if api_key_file is None:
        if api_key and on_command_line:
            click.secho("WARNING: --api-key on the command line shows in `ps` to every user of this machine; put "
                        "the key in CLIPKIT_API_KEY or a file given with --api-key-file.", fg="yellow", err=True)
        return api_key
    if on_command_line:
        raise ConfigError("give the API key with --api-key or --api-key-file, not both")
    try:
        with open(api_key_file, encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"can't read --api-key-file {api_key_file!r} ({e.__class__.__name__}); give a readable "
                          "text file whose first line is the key") from None
    if not key:
        raise ConfigError(f"--api-key-file {api_key_file!r} has no key on its first line; write the key there")
    return key


@click.command()
@model_options
@prompt_options
@click.option("--mode", type=click.Choice(["zeroshot", "probe"]), default=None,
              help="zeroshot: score the labels with prompts. probe: serve a trained head (needs --head). "
                   "[default: probe when --head is given, else zeroshot]")
@head_options
@click.option("--host", default=None, help="Interface to bind. [default: 127.0.0.1; use 0.0.0.0 only behind "
              "a firewall or with --api-key]")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="TCP port. [default: 8000]")
@click.option("--api-key", envvar="CLIPKIT_API_KEY", default=None, show_envvar=True,
              help="Require this key in X-API-Key (or Authorization: Bearer) on /v1/*. Give it in CLIPKIT_API_KEY "
              "or with --api-key-file: on the command line it shows in `ps`.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None,
              help="Read the API key from this file (its first line); the way to keep it out of `ps` and history.")
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
          port: Optional[int], api_key: Optional[str], api_key_file: Optional[str], max_batch_size: Optional[int],
          max_wait_ms: Optional[float],
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
    from toolkit.serve.server import run_server

    from toolkit.predictor import serving_head

    cfg = build_config(config_path, **flags, **{ "serve.host": host, "serve.port": port,
        "serve.api_key": resolve_api_key(api_key, api_key_file),
        "serve.max_batch_size": max_batch_size, "serve.max_wait_ms": max_wait_ms,
        "serve.micro_batching": micro_batching, "serve.queue_size": queue_size,
        "serve.request_timeout_s": request_timeout})
    served = serving_head(cfg, head, mode)
    cfg.serve.mode, cfg.serve.head = ("probe", served) if served else ("zeroshot", None)
    if served is None:  # fail in milliseconds on bad labels or templates, not after the model load
        from toolkit.heads.prompts import resolve_labels, resolve_templates

        resolve_labels(cfg.prompts)
        resolve_templates(cfg.prompts)
    if not is_loopback(cfg.serve.host) and not cfg.serve.api_key:
        click.secho(f"WARNING: binding {cfg.serve.host} without an API key: anyone who can reach this port can "
                    "use the model. Set --api-key or CLIPKIT_API_KEY, or bind 127.0.0.1.", fg="red", bold=True,
                    err=True)
    run_server(cfg, log_level=log_level, access_log=access_log)
