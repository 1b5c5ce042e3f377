"""Merging into a model folder: the shard plan, the index, copied config and tokenizer files, atomicity."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mecha_core as mc
from mecha_core.output_folder import parse_size, plan_shards

from .conftest import TOY_KEYS, toy_model
from .sharding import write_sharded

NAMES = list(TOY_KEYS)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shards_fill_in_order_up_to_the_limit_and_a_larger_key_stands_alone():
    entries = [("a", "float32", (10,)), ("b", "float32", (10,)), ("c", "float16", (100,)), ("d", "int64", (2,))]
    plan = plan_shards(entries, 80)  # 40 + 40 bytes, then 200 alone, then 16
    assert [[name for name, _, _ in shard.entries] for shard in plan.shards] == [["a", "b"], ["c"], ["d"]]
    assert [shard.file_name for shard in plan.shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert plan.total_size == 40 + 40 + 200 + 16
    assert plan.index() == {"metadata": {"total_size": 296}, "weight_map": {
        "a": "model-00001-of-00003.safetensors", "b": "model-00001-of-00003.safetensors",
        "c": "model-00002-of-00003.safetensors", "d": "model-00003-of-00003.safetensors"}}
    assert [(name, start, end) for name, _, _, start, end in plan.shards[0].layout] == [("a", 0, 40), ("b", 40, 80)]
    assert [shard.file_name for shard in plan_shards(entries, 10**9).shards] == ["model.safetensors"]


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                           ("1.5kb", 1500), (4096, 4096), ("100", 100)])
def test_sizes_read_as_transformers_writes_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "", "-1", 0, "GB"])
def test_an_unreadable_size_is_refused(text):
    with pytest.raises(mc.MechaError, match="size"):
        parse_size(text)


@pytest.fixture
def source(tmp_path):
    """Two toy model folders; the first has a config, tokenizer files and a README."""
    a, b = toy_model(seed=1), toy_model(seed=2)
    write_sharded(tmp_path / "a", a, [NAMES[:3], NAMES[3:]])
    write_sharded(tmp_path / "b", b, [NAMES])
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "toy", "torch_dtype": "float32"}))
    (tmp_path / "a" / "tokenizer.json").write_text('{"vocab": {}}')
    (tmp_path / "a" / "generation_config.json").write_text('{"do_sample": false}')
    (tmp_path / "a" / "README.md").write_text("a model card")
    return tmp_path, a, b


def test_a_merge_into_a_folder_writes_shards_index_config_and_tokenizer(plugins, source):
    root, a, b = source
    recipe = mc.weighted_sum(str(root / "a"), str(root / "b"), alpha=0.5)
    written = mc.merge(recipe, str(root / "out") + "/", max_shard_size=64, save_dtype="fp32")
    out = root / "out"
    assert written == out
    files = sorted(os.listdir(out))
    shards = [name for name in files if name.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(files) - set(shards) == {"model.safetensors.index.json", "config.json", "tokenizer.json",
                                        "generation_config.json"}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(NAMES) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in mc.merge(recipe, None, save_dtype="fp32").values())
    for name in shards:
        with mc.open_tensor_file(out / name) as shard:
            size = sum(info.nbytes for info in shard.tensors.values())
            assert size <= 64 or len(shard.tensors) == 1
            assert shard.metadata["format"] == "pt"
    with mc.open_tensor_file(out) as merged:
        for name in NAMES[:-2]:
            torch.testing.assert_close(merged.read(name), (a[name] + b[name]) / 2)
        assert torch.equal(merged.read("step"), a["step"])
    assert json.loads((out / "config.json").read_text()) == {"model_type": "toy", "torch_dtype": "float32"}
    assert (out / "tokenizer.json").read_text() == '{"vocab": {}}'
    assert not [p for p in root.iterdir() if p.name.endswith(".mecha-tmp")]


def test_torch_dtype_is_the_saved_dtype_and_one_shard_is_model_safetensors(plugins, source):
    root, _, _ = source
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out"), max_shard_size="5GB")
    assert sorted(os.listdir(root / "out")) == ["config.json", "generation_config.json", "model.safetensors",
                                                "tokenizer.json"]
    assert json.loads((root / "out" / "config.json").read_text())["torch_dtype"] == "float16"


def test_the_cli_writes_a_folder_for_a_trailing_slash(plugins, source, mecha_cli):
    root, _, _ = source
    recipe = root / "r.mecha"
    recipe.write_text(mc.serialize(mc.weighted_sum(str(root / "a"), str(root / "b"))))
    result = mecha_cli("merge", recipe, "-o", f"{root / 'out'}/", "--max-shard-size", "100B", "--quiet")
    assert result.status == 0, result.err
    assert (root / "out" / "model.safetensors.index.json").is_file()
    result = mecha_cli("merge", recipe, "-o", f"{root / 'out2'}/", "--max-shard-size", "5XB")
    assert result.status == 1 and "cannot read the size '5XB'" in result.err


def test_a_failed_merge_leaves_an_existing_output_folder_untouched(plugins, source):
    root, a, b = source
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out") + "/", max_shard_size=64)
    before = snapshot(root / "out")
    b["layers.1.weight"][0, 0] = float("nan")
    write_sharded(root / "b", b, [NAMES])
    with pytest.raises(mc.MechaError, match="layers.1.weight"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out") + "/", max_shard_size=64,
                 nonfinite="fail")
    assert snapshot(root / "out") == before
    with pytest.raises(mc.MechaError, match="layers.1.weight"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "new") + "/", nonfinite="fail")
    assert not (root / "new").exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".mecha-tmp")]


def test_a_successful_merge_replaces_a_model_folder(plugins, source):
    root, _, _ = source
    target = root / "out"
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b"), alpha=0.0), str(target) + "/", max_shard_size=64)
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b"), alpha=1.0), str(target) + "/")
    assert sorted(os.listdir(target)) == ["config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.json"]
    assert not [p for p in root.iterdir() if p.name.endswith(".mecha-tmp")]


def test_a_folder_of_other_things_is_not_replaced(plugins, source):
    root, _, _ = source
    (root / "keep").mkdir()
    (root / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(mc.MechaError, match="holds other things than a model"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "keep") + "/")
    assert snapshot(root / "keep") == {"notes.txt": b"mine"}


def test_the_output_folder_cannot_be_an_input(plugins, source):
    root, _, _ = source
    before = snapshot(root / "a")
    with pytest.raises(mc.MechaError, match="refusing to write the output over the input"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "a") + "/")
    assert snapshot(root / "a") == before


def test_a_shard_size_for_a_single_file_output_is_refused(plugins, source):
    root, _, _ = source
    with pytest.raises(mc.MechaError, match="a maximum shard size applies to a model folder output"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out.safetensors"), max_shard_size="1GB")
    assert not (root / "out.safetensors").exists()


def test_a_single_file_output_cannot_replace_a_shard_of_an_input(plugins, source):
    root, _, _ = source
    before = snapshot(root / "a")
    with pytest.raises(mc.MechaError, match="refusing to write the output over the input"):
        mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "a" / "model-00002-of-00002.safetensors"))
    assert snapshot(root / "a") == before


def test_each_shard_is_finished_once_its_last_byte_is_written(plugins, source, monkeypatch):
    from mecha_core.output_folder import OutputFolder
    root, _, _ = source
    open_counts = []
    shard = OutputFolder._shard

    def counting(self, index):
        out = shard(self, index)
        open_counts.append(len(self._open))
        return out

    monkeypatch.setattr(OutputFolder, "_shard", counting)
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out") + "/", max_shard_size=16, threads=1)
    assert len(list((root / "out").glob("model-*.safetensors"))) > 4 and max(open_counts) == 1


def test_the_folder_counts_as_written_and_its_shards_do_not(plugins, source):
    from mecha_core.output_file import committed_outputs
    root, _, _ = source
    before = len(committed_outputs())
    mc.merge(mc.weighted_sum(str(root / "a"), str(root / "b")), str(root / "out") + "/", max_shard_size=16)
    assert committed_outputs()[before:] == [root / "out"]
