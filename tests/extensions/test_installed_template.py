"""The plugin template installed with pip, as a user installs a plugin, and mecha run against it.

One ``pip install --target`` (module scope) puts examples/plugin-template into a temporary folder; mecha
then runs in subprocesses with PYTHONPATH pointing there, so entry points, distribution metadata and
the CLI are exercised end to end while the test environment itself never changes. A broken plugin (its
import raises) is installed in a second folder and put beside it or not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch

from .distributions import write_distribution

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "plugin-template"
VERSION = tomllib.loads((TEMPLATE / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
BROKEN_STATUS = ("failed: cannot import mecha_broken: ImportError: mecha_broken needs frobnicate, "
                 "which is not installed")
BROKEN_LABEL = "'broken' (mecha-broken 0.2.0)"


@dataclasses.dataclass(frozen=True)
class Site:
    template: Path  # the pip --target folder
    broken: Path  # a folder holding the broken plugin's module and metadata
    work: Path  # the current folder of the mecha processes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"  # pip builds in place: keep build/ and *.egg-info out of the repository
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # no isolation and no index: the environment's setuptools builds it, nothing is downloaded
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "--quiet", "--target", str(root / "site"), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    write_distribution(root / "broken", "mecha-broken", "0.2.0", "mecha_broken",
                       "raise ImportError('mecha_broken needs frobnicate, which is not installed')", "broken")
    (root / "work").mkdir()
    return Site(root / "site", root / "broken", root / "work")


@pytest.fixture(params=[False, True], ids=["alone", "beside-broken"])
def beside_broken(request: pytest.FixtureRequest) -> bool:
    return request.param


def mecha(site: Site, *args: str, broken: bool, strict: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m mecha_core ARGS`` with the installed plugins on PYTHONPATH and nothing of the user's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MECHA_")}
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in (site.template, site.broken if broken else None) if path)
    env["MECHA_CONFIG"] = str(site.work / "config.toml")
    # only these two: the test must not depend on the health of other plugins installed in this environment
    env["MECHA_LOAD_PLUGINS"] = "myplugin,broken" if broken else "myplugin"
    if strict:
        env["MECHA_STRICT_PLUGINS"] = "1"
    return subprocess.run([sys.executable, "-m", "mecha_core", *args], cwd=site.work, env=env,
                          capture_output=True, text=True, timeout=300)


def warnings_of(broken: bool) -> str:
    return f"mecha: warning: plugin {BROKEN_LABEL} {BROKEN_STATUS}\n" if broken else ""


def test_mecha_plugins_lists_the_template_with_its_distribution(site, beside_broken):
    result = mecha(site, "plugins", "--json", broken=beside_broken)
    assert result.returncode == 0, result.stderr
    assert result.stderr == warnings_of(beside_broken)
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    assert rows["myplugin"] == {
        "name": "myplugin", "distribution": "mecha-myplugin", "version": VERSION, "status": "active",
        "hooks": ["mecha_architectures", "mecha_cli_commands", "mecha_merge_methods"],
        "provides": {"merge_methods": ["capped_lerp"], "architectures": ["toy_mlp"], "cli_commands": ["make_toy_mlp"]},
    }
    if beside_broken:
        assert (rows["broken"]["distribution"], rows["broken"]["version"]) == ("mecha-broken", "0.2.0")
        assert rows["broken"]["status"] == BROKEN_STATUS
    assert sorted(rows) == sorted(["core", "myplugin"] + (["broken"] if beside_broken else []))


def test_mecha_methods_lists_the_template_method(site, beside_broken):
    result = mecha(site, "methods", broken=beside_broken)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("capped_lerp  Move a toward b by alpha, but no entry by more than cap: "
                             "a + clamp(alpha * (b - a), -cap, cap).\n")


def test_a_recipe_merges_command_written_models_with_the_template_method(site):
    # beside the broken plugin only: the torch-importing runs are the slow ones, and this is the harder case
    work = site.work
    for name, seed in (("a", "1"), ("b", "2")):
        made = mecha(site, "make_toy_mlp", str(work / f"{name}.safetensors"), "--seed", seed, broken=True)
        assert made.returncode == 0, made.stderr
        assert made.stdout == f"wrote {work / f'{name}.safetensors'}: toy_mlp, 20 keys, seed {seed}\n"
    inspected = mecha(site, "inspect", str(work / "a.safetensors"), "--json", broken=True)
    assert json.loads(inspected.stdout)["architecture"] == "toy_mlp"
    recipe = work / "capped.mecha"
    recipe.write_text('version 1\nmodel "a.safetensors"\nmodel "b.safetensors"\n'
                      "dict toy_mlp_body_block_layer3=1 toy_mlp_head_default=1\n"
                      'merge "capped_lerp" &0 &1 alpha=&2 cap=0.05\n', encoding="utf-8")
    merged = mecha(site, "merge", str(recipe), "-o", str(work / "out.safetensors"), "--models-dir", str(work),
                   "--save-dtype", "fp32", "--quiet", broken=True)
    assert merged.returncode == 0, merged.stderr
    assert merged.stderr == warnings_of(True)
    a, b, out = (_load(work / f"{name}.safetensors") for name in ("a", "b", "out"))
    assert set(out) == set(a)
    for key, tensor in out.items():
        alpha = 1.0 if key.startswith(("layers.3.", "head.")) else 0.0  # the dict above, by hand
        if key.startswith("normalizer."):  # not merged: copied from the first model
            assert tensor.equal(a[key]), key
            continue
        expected = a[key].double() + (alpha * (b[key].double() - a[key].double())).clamp(-0.05, 0.05)
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6, msg=key)
    assert (out["head.weight"] - a["head.weight"]).abs().max().item() == pytest.approx(0.05)  # the cap was hit


def _load(path: Path) -> dict[str, torch.Tensor]:
    with safetensors.safe_open(str(path), "pt") as file:  # the reference reader
        return {key: file.get_tensor(key) for key in file.keys()}


def test_strict_mode_makes_the_broken_plugin_an_error_naming_it(site):
    result = mecha(site, "plugins", broken=True, strict=True)
    assert result.returncode == 1
    assert result.stderr == f"mecha: error: plugin {BROKEN_LABEL} {BROKEN_STATUS} (MECHA_STRICT_PLUGINS is set)\n"
    alone = mecha(site, "methods", broken=False, strict=True)  # the template itself is clean under strict
    assert (alone.returncode, alone.stderr) == (0, "")
