"""The `probe` command: parses options, calls one function per command, prints. No logic lives here.

Layout: this module holds the typer app, its sub-apps, the startup callback and the table of commands; `options`
the shared options and checks; one module per command family (`extract`, `segment`, `sweeps`, `similarity`,
`correspond`, `runs`, `synthesize`, `data`, `training`). A new command: a function in its family's module, decorated with @user_errors, and one line
in the table below."""

from __future__ import annotations

import logging
import sys

import typer

from probe.cli import correspond, data, extract, runs, segment, similarity, sweeps, synthesize, training
from probe.cli.options import start_work

__all__ = ["app", "main", "start_work"]

app = typer.Typer(
    help="Look inside diffusion models: per-layer/per-step probes (grid), k-means (kmeans) and the few-shot "
         "segmenter (segment) of Baranchuk et al., ICLR 2022, on the paper's DDPMs and baselines, diffusers UNets, "
         "Stable Diffusion, DiT, PixArt, SD3, FLUX and vision foundation models (--backbone). With no data options "
         "every command runs on the embedded default: a synthetic face-parts domain and a small DDPM shipped with "
         "the package. In Python: import probe (docs/notebooks.md).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
)
ddpm_app = typer.Typer(help="Train and sample the guided-diffusion-compatible DDPMs the toolkit probes.", no_args_is_help=True)
mae_app = typer.Typer(help="Train an MAE (the paper's MAE baseline) whose weights load with --backbone mae.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: write the embedded default domain.", no_args_is_help=True)
cache_app = typer.Typer(help="The cache: activations per backbone, the default domain, downloaded datasets and "
                                 "checkpoints ($PROBE_CACHE, default ~/.cache/probe).", no_args_is_help=True)
app.add_typer(ddpm_app, name="ddpm")
app.add_typer(mae_app, name="mae")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")

# The commands, in the order `probe --help` lists them.
app.command()(extract.features)
app.command()(segment.segment)
app.command()(sweeps.grid)
app.command()(sweeps.layers)
app.command()(sweeps.kmeans)
app.command()(similarity.similarity)
app.command()(correspond.correspond)
app.command()(segment.predict)
app.command()(sweeps.efficiency)
app.command()(sweeps.variants)
app.command()(sweeps.robustness)
app.command()(synthesize.synthesize)
app.command()(synthesize.deeplab)
app.command()(data.download)
app.command()(runs.runs)
data_app.command("default")(data.data_default)
ddpm_app.command("train")(training.ddpm_train)
mae_app.command("train")(training.mae_train)
ddpm_app.command("sample")(training.ddpm_sample)
cache_app.command("info")(data.cache_info)
cache_app.command("clear")(data.cache_clear)


def _print_version(value: bool) -> None:
    if value:
        from probe.version import __version__

        typer.echo(f"probe {__version__}")
        raise typer.Exit()


@app.callback()
def startup(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Also print the libraries' own log lines (faiss, torch, pooch)."),
) -> None:
    """Runs before every command, whichever way probe was started (the `probe` script or `python -m probe`), and
    before the command's options are parsed: nothing here imports torch, so --help and option errors answer at once.
    probe's own lines go to stderr; the libraries' only when they warn, or with --verbose."""
    from probe.utils.runtime import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("probe").setLevel(logging.INFO)  # also where the root logger was configured before (a notebook)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_lines)
    keep_freed_memory()


def _own_lines(record: logging.LogRecord) -> bool:
    """probe's own log lines, and the libraries' warnings and errors (their info lines only with --verbose)."""
    return record.name.split(".")[0] == "probe" or record.levelno >= logging.WARNING


def main() -> None:
    app(prog_name="probe")
