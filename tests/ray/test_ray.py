"""The ray executor on a local cluster: the local executor's bytes for a single file (its ranges
covering it, cut at 64 KiB boundaries through tensors; a FLUX.1 one respelled by its layout model too)
and a model folder, a worker dying mid-task retried, a task failing for good or Ctrl-C on the driver
leaving the previous output and nothing else."""

from __future__ import annotations

import json

import pytest
import torch

import mecha_core as mc
from mecha_core import executors
from mecha_core.testing import tiny_model, write_model
from mecha_flux.flux import FLUX

from ..core.sharding import write_sharded
from ..llm.conftest import llama_state_dict


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sd1_models(tmp_path):
    return [write_model(tiny_model("sd1", seed=seed), tmp_path / f"m{seed}.safetensors") for seed in range(3)]


def dare(paths):
    return mc.dare(*(mc.model(str(p)) for p in paths), density=0.5, seed=3)


def test_a_single_file_is_byte_identical_to_the_local_executor(plugins, sd1_models, tmp_path, monkeypatch):
    cuts = []
    real_split = executors.split
    monkeypatch.setattr(executors, "split", lambda job, count: cuts.append(real_split(job, count)) or cuts[-1])
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()  # one output name in both (the name is stored in the output, as its title)
    mc.merge(dare(sd1_models), tmp_path / "local" / "out.safetensors")
    mc.merge(dare(sd1_models), tmp_path / "ray" / "out.safetensors", executor="ray", executor_options={"parts": 3})
    written = (tmp_path / "ray" / "out.safetensors").read_bytes()
    assert written == (tmp_path / "local" / "out.safetensors").read_bytes()
    assert [p.name for p in (tmp_path / "ray").iterdir()] == ["out.safetensors"]  # no temporary file left
    # three ranges of the file after the header's 64 KiB units, cut on 64 KiB, each through a tensor
    header = 8 + int.from_bytes(written[:8], "little")
    spans = [(header + entry["data_offsets"][0], header + entry["data_offsets"][1])
             for name, entry in json.loads(written[8:header]).items() if name != "__metadata__"]
    (parts,) = cuts
    first = -(-header // 65536) * 65536
    assert [(part.start - part.returned, part.end) for part in parts][0] == (header, parts[1].start)
    assert parts[0].start == first and [part.end for part in parts][-1] == len(written) and len(parts) == 3
    assert [part.start for part in parts[1:]] == [part.end for part in parts[:-1]]
    assert all(part.start % 65536 == 0 for part in parts)
    assert all(any(start < part.start < end for start, end in spans) for part in parts[1:])


def test_a_sharded_llm_folder_is_byte_identical_to_the_local_executor(plugins, tmp_path):
    for seed in range(3):
        tensors = llama_state_dict(layers=2, seed=seed)
        names = list(tensors)
        write_sharded(tmp_path / f"m{seed}", tensors, [names[:9], names[9:]])
        (tmp_path / f"m{seed}" / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    recipe = mc.dare_ties(*(mc.model(str(tmp_path / f"m{seed}")) for seed in range(3)), density=0.5, seed=5)
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    mc.merge(recipe, tmp_path / "local" / "out/", max_shard_size=700)
    mc.merge(recipe, tmp_path / "ray" / "out/", max_shard_size=700, executor="ray")
    local = snapshot(tmp_path / "local")
    assert len([name for name in local if name.endswith(".safetensors")]) > 2
    assert snapshot(tmp_path / "ray") == local


def test_a_worker_dying_mid_task_is_retried_and_the_bytes_are_identical(plugins, sd1_models, tmp_path, monkeypatch):
    marker = tmp_path / "exited"
    monkeypatch.setenv("MECHA_RAY_TEST_EXIT_ONCE", str(marker))
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    mc.merge(dare(sd1_models), tmp_path / "ray" / "out.safetensors", executor="ray", executor_options={"parts": 2})
    assert marker.exists()  # the first attempt did exit
    mc.merge(dare(sd1_models), tmp_path / "local" / "out.safetensors")
    assert (tmp_path / "ray" / "out.safetensors").read_bytes() == (tmp_path / "local" / "out.safetensors").read_bytes()


def test_a_task_failing_for_good_stops_the_merge_and_leaves_the_previous_output(plugins, sd1_models, tmp_path):
    broken = tiny_model("sd1", seed=9)
    name = next(key for key, value in broken.items() if value.is_floating_point() and value.numel() > 1)
    broken[name] = torch.full_like(broken[name], float("nan"))
    paths = [*sd1_models[:2], write_model(broken, tmp_path / "broken.safetensors")]
    (tmp_path / "out.safetensors").write_bytes(b"previous")
    with pytest.raises(mc.MechaError, match=f"part .* of 2.*{name}.*NaN"):
        mc.merge(dare(paths), tmp_path / "out.safetensors", executor="ray", nonfinite="fail",
                 executor_options={"parts": 2, "max_retries": 0})
    assert (tmp_path / "out.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["broken.safetensors", "m0.safetensors",
                                                                 "m1.safetensors", "m2.safetensors", "out.safetensors"])


def test_a_flux_file_respelled_by_its_layout_model_is_byte_identical_to_the_local_executor(plugins, tmp_path):
    prefix = "model.diffusion_model."
    write_model(FLUX.generate(seed=1, dtype=torch.bfloat16), tmp_path / "full.safetensors")
    alone = {k.removeprefix(prefix): v for k, v in FLUX.generate(seed=2).items() if k.startswith(prefix)}
    write_model(alone, tmp_path / "alone.safetensors")
    recipe = mc.weighted_sum("full.safetensors", "alone.safetensors", alpha=0.25)
    for executor in ("local", "ray"):
        (tmp_path / executor).mkdir()
        mc.merge(recipe, tmp_path / executor / "out.safetensors", models_dir=tmp_path, layout="alone.safetensors",
                 executor=executor, executor_options={"parts": 3} if executor == "ray" else None)
    assert (tmp_path / "ray" / "out.safetensors").read_bytes() == (tmp_path / "local" / "out.safetensors").read_bytes()
    with mc.open_tensor_file(tmp_path / "ray" / "out.safetensors") as out:
        assert sorted(out.tensors) == sorted(alone)  # the transformer file's unprefixed names


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_leaves_the_previous_output(plugins, sd1_models, tmp_path):
    def interrupt(key, written):
        raise KeyboardInterrupt

    (tmp_path / "out.safetensors").write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        mc.merge(dare(sd1_models), tmp_path / "out.safetensors", executor="ray", progress=interrupt,
                 executor_options={"parts": 4})
    assert (tmp_path / "out.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.safetensors", "m1.safetensors", "m2.safetensors",
                                                          "out.safetensors"]
