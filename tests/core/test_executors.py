"""The executor hook: ``local`` built in, choosing one by name, and the parts an executor hands out
(run here one after the other) giving the same bytes as the local executor, for any split: a single
file's ranges cover it after the header's pages, cut at 64 KiB boundaries, tensors straddling them."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
import torch

import mecha_core as mc
from mecha_core import Same, executors

from .conftest import TOY_KEYS, toy_model
from .parts_executor import InProcessParts
from .sharding import write_sharded

NAMES = list(TOY_KEYS)
UNIT = 64 << 10  # where a single file may be cut: a whole number of pages of any size (4, 16, 64 KiB)
# float32 tensors of 58-87 KB, none a whole number of 4 KiB pages: 1.2 MB in all
WIDE_SHAPES = {f"w.{i}": (97, 150 + 5 * i) for i in range(16)}


def wide_keys():
    for name, shape in WIDE_SHAPES.items():
        yield mc.KeySpec(name, shape, "float32", "body", ("b0",), "linear", merged=True)


WIDE = mc.Architecture("wide", (mc.Component("body", ("b0",)),), wide_keys, summary="larger tensors for the tests")


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@mc.merge_method
def random_mix(a: Same, b: Same, *, seed: int = 0, generator: Any = None) -> Same:
    """Each entry from `a` or `b` at random: a random method of the tests' own (the core is tested alone)."""
    return torch.where(torch.rand(a.shape, generator=generator) < 0.5, a, b)


class RandomPlugin:
    @mc.hookimpl
    def mecha_merge_methods(self):
        return [random_mix]

    @mc.hookimpl
    def mecha_architectures(self):
        return [WIDE]


@pytest.fixture
def models(tmp_path):
    a, b, c = (toy_model(seed=s) for s in (1, 2, 3))
    for name, tensors in (("a", a), ("b", b), ("c", c)):
        mc.save_tensors(tensors, tmp_path / f"{name}.safetensors")
    return tmp_path


@pytest.fixture
def wide(tmp_path):
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        generator = torch.Generator().manual_seed(seed)
        mc.save_tensors({key: torch.randn(shape, generator=generator) for key, shape in WIDE_SHAPES.items()},
                        tmp_path / f"{name}.safetensors")
    return tmp_path


def header_and_tensors(path):
    """The header's size and each tensor's bytes [start, end) in the file, read from the file."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    return 8 + size, {name: (8 + size + entry["data_offsets"][0], 8 + size + entry["data_offsets"][1])
                      for name, entry in header.items() if name != "__metadata__"}


@pytest.fixture
def plugins(plugins):
    plugins.register(RandomPlugin(), "random")
    return plugins


def recipe(folder):
    return random_mix(mc.model(str(folder / "a.safetensors")),
                      mc.weighted_sum(mc.model(str(folder / "b.safetensors")), mc.model(str(folder / "c.safetensors"))),
                      seed=42)


def test_local_is_the_core_executor_and_the_plugins_command_lists_it(plugins, mecha_cli):
    assert list(plugins.executors) == ["local"]
    assert plugins.provider("executors", "local").name == "core"
    assert "  executors: local" in mecha_cli("plugins").out


def test_an_unknown_executor_names_the_nearest_and_ray_names_its_package(plugins, models):
    with pytest.raises(mc.PluginError, match="unknown executor 'locl'.*local"):
        mc.merge(recipe(models), models / "out.safetensors", executor="locl")
    with pytest.raises(mc.MechaError, match="pip install mecha-ray"):
        mc.merge(recipe(models), models / "out.safetensors", executor="ray")
    assert not (models / "out.safetensors").exists()


def test_the_cli_takes_an_executor_and_the_config_file_one(plugins, models, mecha_cli, monkeypatch, tmp_path):
    (models / "r.mecha").write_text(mc.serialize(recipe(models)))
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--executor", "ray")
    assert result.status == 1 and "pip install mecha-ray" in result.err and "Traceback" not in result.err
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--ray-address", "auto")
    assert result.status == 1 and "pip install mecha-ray" in result.err
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--ray-address", "auto",
                       "--executor", "local")
    assert result.status == 2 and "--ray-address runs on ray" in result.err
    config = tmp_path / "config.toml"
    config.write_text('executor = "ray"\n')
    monkeypatch.setenv("MECHA_CONFIG", str(config))
    with pytest.raises(mc.MechaError, match="pip install mecha-ray"):
        mc.merge(recipe(models), models / "out.safetensors")


@pytest.mark.parametrize("count", [1, 2, 3, 100])
def test_ranges_of_a_single_file_give_the_local_bytes_with_a_random_method(plugins, wide, count):
    mc.merge(recipe(wide), wide / "local.safetensors")
    executor = InProcessParts(count)
    plugins.register(executor, "parts")
    mc.merge(recipe(wide), wide / "parts.safetensors", executor="parts", save_dtype="float32")
    mc.merge(recipe(wide), wide / "local32.safetensors", save_dtype="float32")
    mc.merge(recipe(wide), wide / "parts16.safetensors", executor="parts")
    assert (wide / "parts.safetensors").read_bytes() == (wide / "local32.safetensors").read_bytes()
    assert (wide / "parts16.safetensors").read_bytes() == (wide / "local.safetensors").read_bytes()
    assert sorted(p.name for p in wide.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors",
                                                       "local.safetensors", "local32.safetensors",
                                                       "parts.safetensors", "parts16.safetensors"]
    # the ranges: from the end of the header's last unit (the driver's) to the file's end, each
    # starting where the last ended, every cut on a unit; the first returns the data before it
    header, tensors = header_and_tensors(wide / "parts.safetensors")
    total = (wide / "parts.safetensors").stat().st_size
    parts = executors.split(executor.jobs[0], count)
    first = -(-header // UNIT) * UNIT
    assert (parts[0].start, parts[0].returned, parts[-1].end) == (first, first - header, total)
    assert [part.start for part in parts[1:]] == [part.end for part in parts[:-1]]
    assert all(part.start % UNIT == 0 and part.start < part.end for part in parts)
    assert len(parts) == (count if count < 100 else -(-(total - first) // UNIT))
    for part in parts:  # a range holds exactly the tensors with bytes in it (its returned bytes too)
        low = part.start - part.returned
        assert sorted(part.entries) == sorted(e for e in executor.jobs[0].parts[0].entries
                                              if tensors[e[0]][0] < part.end and tensors[e[0]][1] > low)
        assert list(part.offsets) == [tensors[name][0] for name, _, _ in part.entries]
    straddling = [name for name, (start, end) in tensors.items() for part in parts[1:] if start < part.start < end]
    assert len(straddling) == len(parts) - 1  # no tensor is a whole number of pages: each cut splits one


def test_a_job_is_small_picklable_data_naming_models_by_absolute_path(plugins, models, monkeypatch):
    executor = InProcessParts(2)
    plugins.register(executor, "parts")
    monkeypatch.chdir(models)
    relative = mc.weighted_sum("a.safetensors", "b", alpha=0.25)
    mc.merge(relative, "out.safetensors", executor="parts", executor_options={"address": "x"},
             fallback_model="c")
    job = pickle.loads(pickle.dumps(executor.jobs[0]))
    assert str(models / "a.safetensors") in job.recipe and str(models / "b.safetensors") in job.recipe
    assert str(models / "c.safetensors") in job.fallback
    assert job.executor_options == {"address": "x"} and job.output == str(models / "out.safetensors")
    assert len(pickle.dumps(job)) < 4000


def test_shards_of_a_folder_are_written_by_parts_and_match_the_local_folder(plugins, tmp_path):
    write_sharded(tmp_path / "a", toy_model(seed=1), [NAMES[:3], NAMES[3:]])
    write_sharded(tmp_path / "b", toy_model(seed=2), [NAMES])
    node = random_mix(mc.model(str(tmp_path / "a")), mc.model(str(tmp_path / "b")), seed=7)
    mc.merge(node, tmp_path / "local/", max_shard_size=64)
    plugins.register(InProcessParts(1), "parts")
    mc.merge(node, tmp_path / "parts/", max_shard_size=64, executor="parts")
    local = snapshot(tmp_path / "local")
    assert len(local) > 3 and snapshot(tmp_path / "parts") == local


def test_a_part_that_does_not_match_its_report_is_refused_and_nothing_is_written(plugins, wide, monkeypatch):
    real = executors.run_parts

    def corrupted(job, parts, **kwargs):
        results = real(job, parts, **kwargs)
        with open(results[-1].path, "r+b") as handle:
            handle.seek(-1, 2)
            handle.write(b"\x7f")
        return results

    monkeypatch.setattr(executors, "run_parts", corrupted)
    plugins.register(InProcessParts(2), "parts")
    (wide / "out.safetensors").write_bytes(b"previous")
    with pytest.raises(mc.MechaError, match=r"part 2 \(bytes .* of .*\.mecha-tmp\).*SHA-256"):
        mc.merge(recipe(wide), wide / "out.safetensors", executor="parts")
    assert (wide / "out.safetensors").read_bytes() == b"previous"
