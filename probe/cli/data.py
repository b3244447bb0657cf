"""Data and cache: probe download, probe data default, probe cache info / clear."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from probe.cli.options import Out, Overwrite, Quiet, Revision, Seed, user_errors
from probe.errors import ProbeError


@user_errors
def download(
    names: Optional[list[str]] = typer.Argument(None, help="Datasets (horse21, spair71k, ...) or hub models (owner/name)."),
    what: str = typer.Option("data,checkpoints", "--what", help="data, checkpoints, synthetic (comma list) or all."),
    backbones: str = typer.Option("ddpm,mae,swav,swav_w2", "--backbones", help="Whose paper checkpoints --what checkpoints fetches."),
    backbone: str = typer.Option("diffusers", "--backbone", help="For a hub model: diffusers, sd, transformers, dit, pixart, sd3 or flux."),
    revision: Optional[str] = Revision,
    list_items: bool = typer.Option(False, "--list", help="List every known item and its state."),
    verify: bool = typer.Option(False, "--verify", help="Hash every download again; delete what changed."),
    quiet: bool = Quiet,
):
    """Fetch the paper's datasets, checkpoints and synthetic datasets, or hub models, into the cache ahead of use
    (for a cluster's shared cache, or a machine that will go offline). Commands given --dataset fetch what they
    need by themselves; $PROBE_MIRROR replaces the authors' storage root.

    Examples:

    \b
      probe download horse21 ffhq34
      probe download horse21 --what all
      probe download spair71k pfpascal
      probe download bedroom28 --what checkpoints --backbones ddpm,swav
      probe download google/ddpm-ema-bedroom-256
      probe download stable-diffusion-v1-5/stable-diffusion-v1-5 --backbone sd
      probe download --list
    """
    from probe.data import fetch
    from probe.data.hub import hub_snapshot, is_repo_id
    from probe.data.registry import (
        CHECKPOINT_FOLDERS,
        is_pairs_dataset,
        lookup,
        lookup_pairs,
        pairs_items,
        published_items,
    )

    if list_items or verify:
        return _list_downloads(fetch, [*published_items(), *pairs_items()]) if list_items else _verify_downloads(fetch)
    if not names:
        raise ProbeError("name what to download (e.g. probe download horse21), or pass --list or --verify")
    parts = {"data", "checkpoints", "synthetic"} if what == "all" else {w.strip() for w in what.split(",") if w.strip()}
    kinds = [b.strip() for b in backbones.split(",") if b.strip()]
    for value, allowed, option in ((parts, {"data", "checkpoints", "synthetic"}, "--what"),
                                   (set(kinds), set(CHECKPOINT_FOLDERS), "--backbones")):
        if not value or value - allowed:
            raise ProbeError(f"{option} {what if option == '--what' else backbones!r}: choose from "
                             f"{', '.join(sorted(allowed))}{' or all' if option == '--what' else ''}")
    from probe.backbones.spec import HUB_BACKBONES

    if backbone not in HUB_BACKBONES:
        raise ProbeError(f"--backbone {backbone!r}: a hub model is fetched for {', '.join(HUB_BACKBONES)}")
    benchmarks = [lookup_pairs(name) for name in names if is_pairs_dataset(name)]
    # an unknown name fails before any download
    datasets = [lookup(name) for name in names if not is_repo_id(name) and not is_pairs_dataset(name)]
    for name in names:
        if is_repo_id(name):
            typer.echo(f"{name}: {hub_snapshot(name, backbone, revision=revision, progress=not quiet)}")
    for info in datasets:
        if "data" in parts:
            typer.echo(f"{info.name}: {fetch.dataset_root(info, progress=not quiet) / info.name}")
        for kind in kinds if "checkpoints" in parts else []:
            typer.echo(f"{info.name} {kind}: {fetch.paper_checkpoint(kind, info, progress=not quiet)}")
        if "synthetic" in parts and info.synthetic:
            typer.echo(f"{info.name} synthetic: {fetch.synthetic_dataset(info, progress=not quiet)}")
    for benchmark in benchmarks if "data" in parts else []:
        typer.echo(f"{benchmark.name}: {fetch.pairs_dataset(benchmark, progress=not quiet)}")


def _list_downloads(fetch, items) -> None:
    from rich.table import Table

    mirror = os.environ.get("PROBE_MIRROR")
    table = Table(title=f"published under {fetch.storage_root()}" + ("" if mirror else " and the benchmarks' sites"))
    for column in ("item", "state", "size", "cached at"):
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
    unknown = 0
    for item in items:
        row = fetch.item_status(item)
        unknown += not row["bytes"]
        table.add_row(row["item"], row["state"], _size(row["bytes"]) if row["bytes"] else "", row["path"])
    if unknown:  # the registry holds no sizes: the authors' storage publishes none (the download bar shows each)
        table.caption = "a size shows once the item is downloaded: the authors publish no file sizes"
    Console().print(table)


def _verify_downloads(fetch) -> None:
    rows = fetch.verify_downloads()
    for row in rows:
        typer.echo(f"{row['item']}: {row['problem'] or 'ok'}")
    bad = [row for row in rows if row["problem"]]
    typer.echo(f"{len(rows)} items checked, {len(bad)} with problems")
    if bad:
        raise typer.Exit(1)


@user_errors
def data_default(
    out: Path = Out, overwrite: bool = Overwrite,
    size: int = typer.Option(32, "--size", help="Image size."),
    pool: int = typer.Option(5000, "--pool", help="Unlabelled images for DDPM training."),
    seed: int = Seed, quiet: bool = Quiet,
):
    """Write the embedded default domain (synthetic face portraits with 10 part labels) in the authors' layout.

    Example: probe data default --out data/faces
    """
    from probe.data.default_domain import write_default_domain

    write_default_domain(out, size=size, pool=pool, seed=seed, progress=not quiet, overwrite=overwrite)
    typer.echo(f"wrote the default domain to {out}")


@user_errors
def cache_info():
    """What the cache holds: one row per backbone identity (activations, with the dtype they are stored in), default-
    domain folder, downloaded dataset and downloaded file.

    Example: probe cache info
    """
    from rich.measure import Measurement
    from rich.table import Table

    from probe.utils.cache import cache_entries, cache_root

    entries = cache_entries()
    table = Table(title=escape(str(cache_root())))
    for column in ("kind", "name", "backbone", "images", "files", "size", "dtype", "last used"):
        table.add_column(column, justify="right" if column in ("images", "files", "size") else "left", no_wrap=True)
    for row in entries.itertuples():
        table.add_row(row.kind, escape(row.name), escape(row.backbone), str(row.images), str(row.files),
                      _size(row.bytes), row.dtypes, _age(row.last_used))
    screen = Console()
    if Measurement.get(screen, screen.options.update_width(10_000), table).maximum <= screen.width:
        screen.print(table)
    else:  # a terminal too narrow for the table: an entry per two lines, nothing cut (the terminal wraps)
        typer.echo(str(cache_root()))
        for row in entries.itertuples():
            details = [f"backbone {row.backbone}"] if row.backbone else []
            details += [f"{row.images} images"] if row.images else []
            details += [f"{row.files} files", _size(row.bytes)] + ([row.dtypes] if row.dtypes else [])
            details += [f"last used {_age(row.last_used)}"]
            typer.echo(f"{row.kind}: {row.name}\n    {', '.join(details)}")
    typer.echo(f"{len(entries)} entries, {_size(entries['bytes'].sum())} in all")


@user_errors
def cache_clear(
    older_than: Optional[float] = typer.Option(None, "--older-than", help="Only entries unused for more than DAYS days."),
):
    """Delete cached activations, default-domain folders and downloads (all, or those unused for --older-than days),
    and files left by killed runs. Everything deleted is recomputed or downloaded again when needed.

    Examples: probe cache clear   |   probe cache clear --older-than 30
    """
    from probe.utils.cache import clear_cache

    if older_than is not None and older_than < 0:
        raise ProbeError(f"--older-than {older_than}: give a number of days >= 0")
    removed = clear_cache(older_than_days=older_than)
    typer.echo(f"removed {len(removed)} entries, {_size(removed['bytes'].sum())}")


def _size(nbytes: float) -> str:
    """Bytes in B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def _age(timestamp: float) -> str:
    import time

    days = (time.time() - timestamp) / 86400
    return f"{days:.1f} days ago" if days >= 1 else f"{days * 24:.1f} hours ago"
