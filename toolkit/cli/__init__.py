"""The `clipkit` command group. Each area adds its commands from its own module; heavy imports stay lazy."""
from __future__ import annotations

import click

from toolkit.errors import ToolkitError
from toolkit.cli.common import flag_name, interrupted_line, signals_as_interrupts

OWN_SIGNALS = {"serve", "label"}  # commands that handle SIGTERM / SIGINT themselves (uvicorn drains, then exits 0)


class _Group(click.Group):
    """Turns a ToolkitError anywhere below into `error: <message>` on stderr and its exit code, and SIGTERM /
    SIGINT (see common.signals_as_interrupts) into one line and exit code 143 / 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ToolkitError as e:
            click.echo(f"error: {e.phrased(flag_name)}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:
            line, code = interrupted_line(e)
            click.echo(line, err=True)
            ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipkit")
def main() -> None:
    """clipkit: classify images and videos with CLIP, zero-shot or with a trained linear probe.

    \b
    Typical session:
      clipkit predict --config configs/demo.yaml data/samples     # zero-shot, offline demo model
      clipkit demo-data out/demo --n-per-class 100                # a labelled dataset to play with
      clipkit train-probe out/demo --config configs/demo.yaml --out out/head
      clipkit predict --config configs/demo.yaml --head out/head data/samples
      clipkit compare                                              # MLflow: prompts vs probes

    Exit codes: 0 ok, 1 some inputs failed, 2 bad input or config, 3 model/head error, 4 tracking error,
    5 disk full (what was written so far is kept: free space and rerun), 143 / 130 stopped by SIGTERM /
    Ctrl-C (an MLflow run it had open ends KILLED).
    """
    ctx = click.get_current_context()
    if ctx.invoked_subcommand not in OWN_SIGNALS:
        ctx.with_resource(signals_as_interrupts())


from toolkit.cli import evaluate, stores  # noqa: E402
from toolkit.cli import label  # noqa: E402
from toolkit.cli import demo, embed, export, predict, probe, serve, track, video  # noqa: E402  (each imports its heavy deps lazily)

for _command in (
    predict.predict, predict.models,                  # zero-shot or probe prediction on images
    video.predict_video,                              # videos: smoothed time series, segments, reps
    probe.extract, probe.train_probe,                 # feature store, linear probe
    embed.embed,                                      # embeddings of unlabelled images
    track.eval_prompts, track.compare,                # MLflow experiments
    serve.serve,                                      # HTTP server and web page
    demo.demo_data, demo.demo_video,                  # synthetic exercise data
    export.export_onnx,                               # ONNX Runtime image tower
    evaluate.evaluate,                                # a head on a labelled split: intervals, mistakes
    stores.stores,                                    # cached feature stores: list, clean
    label.label, label.suggest, label.audit,          # labelling page, what to label next, label errors
):
    main.add_command(_command)
