"""mkdocs hooks: the backbones table rendered from probe.backbones.spec (torch-free), and the figures of figures/ served
under figures/ without copies in docs/."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

from probe.backbones.spec import (
    BACKBONE_FAMILIES,
    BACKBONE_KINDS,
    CLASS_BACKBONES,
    DTYPE_BACKBONES,
    OFFLOAD_BACKBONES,
    STEP_BACKBONES,
    TEXT_BACKBONES,
)

MARKER = "<!-- backbone-families -->"
FIGURES = Path(__file__).resolve().parent.parent / "figures"


def conditioning(kind: str) -> str:
    """What a family's features can be conditioned on, and the options it takes beyond the common ones."""
    parts = []
    if kind in TEXT_BACKBONES:
        parts.append("`--prompt`")
    if kind in CLASS_BACKBONES:
        parts.append("`--class-label`")
    if kind in DTYPE_BACKBONES:
        parts.append("`--model-dtype`")
    if kind in OFFLOAD_BACKBONES:
        parts.append("`--offload`")
    return ", ".join(parts) or "none"


def backbone_table() -> str:
    """The Markdown table of every --backbone kind, in the registry's order."""
    rows = ["| `--backbone` | network | `--checkpoint` | cells | steps | default cells of `segment` | input | "
            "conditioning, options |",
            "|---|---|---|---|---|---|---|---|"]
    for kind in BACKBONE_KINDS:
        family = BACKBONE_FAMILIES[kind]
        steps = "yes" if kind in STEP_BACKBONES else "no"
        cells = [f"`{kind}`", family.network, family.checkpoint, family.cells, steps, family.segment_cells,
                 family.input, conditioning(kind)]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, backbone_table()) if MARKER in markdown else markdown


def on_files(files, config):
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File(f"figures/{png.name}", str(FIGURES.parent), config["site_dir"], config["use_directory_urls"]))
    return files
