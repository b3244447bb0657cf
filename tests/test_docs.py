"""The documentation site: `mkdocs build --strict` passes, the backbones table is the code's, README stays short."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probe.backbones.spec import BACKBONE_FAMILIES, BACKBONE_KINDS, LAST_LAYERS, PAPER_BLOCKS, PAPER_STEPS

ROOT = Path(__file__).resolve().parent.parent


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built with --strict (any warning, e.g. a broken link or a bad docstring, fails it)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(out)], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def row(table: str, kind: str) -> list[str]:
    """The cells of `kind`'s row of the generated Markdown table."""
    line = next(line for line in table.splitlines() if line.startswith(f"| `{kind}` |"))
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_backbone_table_lists_every_kind_with_the_code_defaults():
    table = load_hooks().backbone_table()
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == list(BACKBONE_KINDS)
    ddpm = row(table, "ddpm")
    assert ddpm[4] == "yes"  # steps
    assert ddpm[5] == "blocks {5,6,7,8,12} of 18 at t {50,150,250} (scaled to other depths and T)"
    assert ddpm[7] == "none"
    assert row(table, "mae")[5].startswith(f"the last {LAST_LAYERS} blocks") and row(table, "mae")[4] == "no"
    assert row(table, "sd")[7] == "`--prompt`, `--model-dtype`, `--offload`"
    assert row(table, "dit")[7] == "`--class-label`, `--model-dtype`, `--offload`"
    assert "--offload" not in row(table, "transformers")[7]
    assert row(table, "flux")[5] == "DiTF's block 28 (of 57) at t = 260"


def test_table_defaults_are_what_the_backbones_build():
    """The shipped DDPM and MAE, built for `probe segment` without --blocks / --steps, take the cells the table
    names; the table covers the registry."""
    from probe.backbones import BACKBONES, BackboneSpec, build_backbone

    assert set(BACKBONE_FAMILIES) == set(BACKBONES) == set(BACKBONE_KINDS)
    ddpm = build_backbone(BackboneSpec(kind="ddpm"), "segment")
    assert ddpm.layers == [f"block{b}" for b in PAPER_BLOCKS] and ddpm.steps == list(PAPER_STEPS)
    assert "{" + ",".join(map(str, PAPER_BLOCKS)) + "}" in BACKBONE_FAMILIES["ddpm"].segment_cells
    mae = build_backbone(BackboneSpec(kind="mae"), "segment")
    assert mae.layers == [f"block{b}" for b in range(12 - LAST_LAYERS, 12)]  # the shipped MAE has 12 blocks


def test_site_renders_the_table_the_figures_and_the_api(site):
    backbones = (site / "backbones" / "index.html").read_text()
    assert "<!-- backbone-families -->" not in backbones
    assert "blocks {5,6,7,8,12} of 18 at t {50,150,250}" in backbones
    assert backbones.count("<tr>") == len(BACKBONE_KINDS) + 1  # header and one row per kind
    assert (site / "figures" / "grid_all.png").stat().st_size == (ROOT / "figures" / "grid_all.png").stat().st_size
    assert 'src="../../figures/grid_all.png"' in (site / "experiments" / "grid" / "index.html").read_text()
    api = (site / "api" / "index.html").read_text()
    assert "load_backbone" in api and "Segmenter" in api


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    assert ("pip install torch==2.13.0 && pip install -e . && probe segment" in readme
            and 'pip install -e ".[test]" && python -m pytest -q' in readme)
    links = re.findall(r"\]\(((?:docs|figures)/[^)#]+)", readme)
    assert len(links) > 20
    assert [link for link in links if not (ROOT / link).exists()] == []
