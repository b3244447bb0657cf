"""Without an optional extra (diffusers, transformers, huggingface_hub, accelerate, ray), every backbone and path that
needs it ends in one line naming the `pip install` to run, exit code 2, no traceback. The test extra installs them
all, so their absence is simulated in this process: sys.modules[name] = None makes `import name` (and of any of its
submodules) raise ModuleNotFoundError, as when the package is not installed."""

import sys

import pytest
from typer.testing import CliRunner

from probe.backbones.spec import EXTRA_LIBRARIES, BackboneSpec
from probe.cli import app
from probe.errors import ProbeError
from probe.utils.extras import install_command, require

DIFFUSERS = 'pip install -e ".[diffusers]"'
HUB_NAME = "facebook/dinov2-small"


@pytest.fixture()
def without(monkeypatch):
    """without(*names): these libraries cannot be imported for the rest of the test."""
    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def one_error_line(args: list) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("kind", sorted(EXTRA_LIBRARIES))
def test_each_family_without_the_diffusers_extra_is_one_line(kind, without, tiny_domain, tmp_path):
    without("diffusers", "transformers", "huggingface_hub", "accelerate")
    libraries = ["transformers"] if kind == "transformers" else ["diffusers", "transformers"]
    out = tmp_path / "out"
    line = one_error_line(["segment", "--data", tiny_domain, "--backbone", kind, "--checkpoint", HUB_NAME,
                           "--out", out, "--quiet"])
    assert line == (f"error: --backbone {kind} needs {', '.join(libraries)} and huggingface_hub, which are not "
                    f"installed: {DIFFUSERS}")
    folder = tmp_path / "model"
    folder.mkdir()
    line = one_error_line(["features", "--backbone", kind, "--checkpoint", folder, "--images", tiny_domain / "train",
                           "--out", out, "--quiet"])
    needs = "transformers, which is" if kind == "transformers" else "diffusers and transformers, which are"
    assert line == f"error: --backbone {kind} needs {needs} not installed: {DIFFUSERS}"
    assert not out.exists()


def test_a_hub_download_without_huggingface_hub(without):
    without("huggingface_hub")
    assert one_error_line(["download", HUB_NAME, "--backbone", "transformers"]) == (
        f"error: --backbone transformers with a hub name needs huggingface_hub, which is not installed: {DIFFUSERS}")


def test_offload_without_accelerate_and_ray_without_ray(without, tiny_domain, tmp_path):
    without("accelerate", "ray")  # diffusers and transformers import without accelerate
    folder = tmp_path / "sd"
    folder.mkdir()
    assert one_error_line(["segment", "--data", tiny_domain, "--backbone", "sd", "--checkpoint", folder,
                           "--offload", "model", "--out", tmp_path / "out", "--quiet"]) == (
        f"error: --backbone sd needs accelerate, which is not installed: {DIFFUSERS}")
    assert one_error_line(["grid", "--data", tiny_domain, "--backbone", "pixels", "--ray", "local", "--out",
                           tmp_path / "grid", "--quiet"]) == (
        'error: --ray needs ray, which is not installed: pip install -e ".[ray]"')
    assert not (tmp_path / "out").exists() and not (tmp_path / "grid").exists()


def test_require_returns_the_module_or_names_every_missing_one(without):
    assert require("ray", purpose="x") is sys.modules["ray"]
    without("ray", "accelerate")
    with pytest.raises(ProbeError) as error:
        require("diffusers", "accelerate", "ray", purpose="this")
    assert str(error.value) == ('this needs accelerate and ray, which are not installed: pip install -e ".[diffusers]" '
                                '&& pip install -e ".[ray]"')
    with pytest.raises(ValueError, match="numpy is not an optional library"):
        require("numpy", purpose="x")
    assert install_command("ray") == 'pip install -e ".[ray]"'
    # the API and the registry check a spec the same way, before any load
    spec = BackboneSpec("sd", "owner/model", offload="model")
    with pytest.raises(ProbeError, match="--backbone sd needs accelerate, which is not installed"):
        spec.require_libraries()
    BackboneSpec("pixels").require_libraries()  # needs no extra
