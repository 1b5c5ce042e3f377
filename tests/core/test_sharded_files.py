"""Sharded models: a folder or its index reads as one file; a broken index is an error naming the file."""

from __future__ import annotations

import os

import pytest
import torch

import mecha_core as mc
from mecha_core.sharded_files import ShardedFile

from .conftest import TOY_KEYS, toy_model
from .sharding import write_sharded

NAMES = list(TOY_KEYS)
HALVES = [NAMES[:4], NAMES[4:]]


def test_a_folder_and_its_index_read_every_key_from_its_shard(tmp_path):
    model = toy_model(seed=3)
    folder = write_sharded(tmp_path / "toy", model, HALVES)
    for path in (folder, folder / "model.safetensors.index.json"):
        with mc.open_tensor_file(path) as file:
            assert isinstance(file, ShardedFile)
            order = list(file.tensors)  # shard by shard, each in its stored order
            assert set(order[:4]) == set(HALVES[0]) and set(order[4:]) == set(HALVES[1])
            for name, tensor in model.items():
                assert torch.equal(file.read(name), tensor)
            assert torch.equal(file.read_flat("embed.weight", 3, 9), model["embed.weight"].reshape(-1)[3:9])


def test_a_folder_with_one_model_safetensors_opens_that_file(tmp_path):
    mc.save_tensors(toy_model(), tmp_path / "model.safetensors")
    with mc.open_tensor_file(tmp_path) as file:
        assert file.path == tmp_path / "model.safetensors" and set(file.tensors) == set(NAMES)


def test_shards_linked_from_elsewhere_are_read_as_the_hugging_face_cache_lays_them_out(tmp_path):
    model = toy_model(seed=4)
    write_sharded(tmp_path / "blobs", model, HALVES)
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for item in (tmp_path / "blobs").iterdir():
        (snapshot / item.name).symlink_to(item)
    with mc.open_tensor_file(snapshot) as file:
        assert torch.equal(file.read("head.weight"), model["head.weight"])


def test_a_missing_shard_is_named(tmp_path):
    folder = write_sharded(tmp_path / "toy", toy_model(), HALVES)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(mc.ModelFileError, match=r"model-00002-of-00002\.safetensors: missing; .*index\.json lists it"):
        mc.open_tensor_file(folder)


def test_a_key_absent_from_the_shard_the_index_names_is_an_error(tmp_path):
    weight_map = {name: "model-00001-of-00002.safetensors" for name in NAMES}
    folder = write_sharded(tmp_path / "toy", toy_model(), HALVES, weight_map=weight_map)
    with pytest.raises(mc.ModelFileError, match=r"model-00001-of-00002\.safetensors: does not hold key 'layers.1.norm.weight', "
                                                r"which model\.safetensors\.index\.json places in it"):
        mc.open_tensor_file(folder)


def test_a_key_held_by_two_shards_is_an_error(tmp_path):
    folder = write_sharded(tmp_path / "toy", toy_model(), [NAMES[:4], NAMES[3:]])
    with pytest.raises(mc.ModelFileError, match=r"key 'layers.1.weight' is held by two shards, "
                                                r"model-00001-of-00002.safetensors and model-00002-of-00002.safetensors"):
        mc.open_tensor_file(folder)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors", "model.bin"])
def test_an_index_pointing_outside_its_folder_is_refused(tmp_path, shard):
    folder = write_sharded(tmp_path / "toy", toy_model(), [NAMES], weight_map={"embed.weight": shard})
    with pytest.raises(mc.ModelFileError, match="not a valid shard index: key 'embed.weight' is mapped to"):
        mc.open_tensor_file(folder)


@pytest.mark.parametrize("text", ["not json", "[]", '{"weight_map": []}'])
def test_a_malformed_index_is_refused(tmp_path, text):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(mc.ModelFileError, match="index.json: not a valid shard index"):
        mc.open_tensor_file(tmp_path)


def test_a_recipe_names_a_model_folder_by_path_or_under_the_models_folder(plugins, tmp_path):
    a, b = toy_model(seed=1), toy_model(seed=2)
    write_sharded(tmp_path / "a", a, HALVES)
    write_sharded(tmp_path / "b", b, [NAMES[:2], NAMES[2:5], NAMES[5:]])
    out = mc.merge(mc.weighted_sum(str(tmp_path / "a"), "b", alpha=0.25), None, models_dir=tmp_path,
                   save_dtype="fp32")
    torch.testing.assert_close(out["layers.0.weight"], 0.75 * a["layers.0.weight"] + 0.25 * b["layers.0.weight"])
    assert torch.equal(out["decoder.weight"], a["decoder.weight"])


def test_a_shard_replaced_after_opening_is_noticed(tmp_path):
    model = toy_model(seed=5)
    folder = write_sharded(tmp_path / "toy", model, HALVES)
    with mc.open_tensor_file(folder) as file:
        file.check_unchanged()
        mc.save_tensors({name: model[name] for name in HALVES[1]}, tmp_path / "new.safetensors")
        os.replace(tmp_path / "new.safetensors", folder / "model-00002-of-00002.safetensors")
        with pytest.raises(mc.ModelFileError, match="model-00002-of-00002.safetensors"):
            file.check_unchanged()
