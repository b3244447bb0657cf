"""The numbers the docs quote are those of docs/numbers.json, which analysis/docs_numbers.py measures."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("docs_numbers", ROOT / "analysis" / "docs_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def numbers() -> dict:
    return json.loads((ROOT / "docs" / "numbers.json").read_text())


def test_every_quote_in_the_docs_is_docs_numbers_json(script, numbers):
    assert script.missing_quotes(numbers) == []
    files = {name for name, _ in script.QUOTES}
    assert {"README.md", "docs/experiments/segment.md", "docs/experiments/grid.md",
            "docs/experiments/layers.md", "docs/embedded-default.md"} <= files
    values = script.quoted_values(numbers)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"mIoU {values['segment_miou']:.2f};" in readme


def test_numbers_name_the_machine_date_and_commands(script, numbers):
    assert set(numbers["runs"]) == set(script.RUNS)
    for name, run in numbers["runs"].items():
        assert run["command"] == " ".join(script.RUNS[name])
        assert run["cpu"] and run["cpu"] != "unknown" and isinstance(run["amx"], bool)
        assert len(run["date"]) == 10 and run["date"].startswith("20")
        assert run["seconds"] > 0 and run["load_average"]["max"] >= run["load_average"]["mean"] >= 0
    assert 0 < numbers["runs"]["segment"]["miou"] < 100
    grid, layers = numbers["runs"]["grid"], numbers["runs"]["layers"]
    assert grid["cells"] == 18 * 9 and layers["cells"] == 18 * 9 + 12  # the DDPM's grid and the MAE's 12 blocks
    assert grid["best"]["miou"] > numbers["runs"]["grid_random"]["best"]["miou"]
    ddpm = layers["backbones"]["ddpm"]
    assert ddpm["lowest_miou"] <= ddpm["miou"] and 0 <= ddpm["relative_depth"] <= 1


def test_a_changed_number_is_found_and_the_script_rewrites_it(script, numbers, tmp_path):
    changed = copy.deepcopy(numbers)
    changed["runs"]["grid"]["best"]["miou"] += 0.3
    changed["runs"]["layers"]["seconds"] += 61
    missing = script.missing_quotes(changed)
    before, after = script.quoted_values(numbers), script.quoted_values(changed)
    moved = [f"{name}: {template.format(**after)}" for name, template in script.QUOTES
             if template.format(**after) != template.format(**before)]  # the quotes that hold the changed values
    assert missing == moved and len(moved) >= 3
    assert all(m.startswith(("docs/experiments/grid.md", "docs/embedded-default.md", "docs/experiments/layers.md"))
               for m in missing)
    # the rewrite puts the new values in, keeps the text's own line breaks, and then nothing is missing
    for name in {name for name, _ in script.QUOTES}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    script.write_docs(changed, tmp_path)
    assert script.missing_quotes(changed, tmp_path) == []
    layers = (tmp_path / "docs/experiments/layers.md").read_text()
    before = (ROOT / "docs/experiments/layers.md").read_text()
    assert layers.count("\n") == before.count("\n")
    assert script.duration(changed["runs"]["layers"]["seconds"]) in " ".join(layers.split())
    with pytest.raises(ValueError, match="not found"):
        script.rewrite("nothing quoted here", script.QUOTES[0][1], script.quoted_values(numbers))


def test_duration_and_block_formats(script):
    assert [script.duration(s) for s in (45.4, 60, 493.2)] == ["45 s", "1 min 0 s", "8 min 13 s"]
    assert script.block("block12") == 12
