"""The generated layouts equal the real ones, and every key has a sensible component, block and class."""

from __future__ import annotations

import csv
import math
import re

import pytest
from mecha_core.random_models import selected
from mecha_sd_blocks import PRUNED_COMPONENTS
from mecha_sd1.sd1 import SD1
from mecha_sd3.sd3 import SD3
from mecha_sdxl.sdxl import SDXL

ARCHITECTURES = {"sd1": (SD1, "sd1-ldm.tsv"), "sdxl": (SDXL, "sdxl-sgm.tsv"), "sd3": (SD3, "sd3-comfyui.tsv")}
# reference component -> the merge component it becomes
MERGED_AS = {"clip_l": "txt", "clip_g": "txt2", "t5xxl": "t5xxl", "diffuser": "unet"}
# keys of merged parts that are buffers or sampling settings, not weights
PASSED_THROUGH = re.compile(r"(\.position_ids|^v_pred|^ztsnr|^edm_vpred\..*|^model\.model_sampling\..*)$")


def read_table(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["key"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_keys_shapes_dtypes_and_aliases_equal_the_reference(name, reference):
    arch, table_name = ARCHITECTURES[name]
    table = read_table(reference / table_name)
    specs = arch.key_specs
    assert sorted(specs) == sorted(table)
    for key, row in table.items():
        spec = specs[key]
        expected_shape = tuple(int(d) for d in row["shape"].split(",") if d)
        aliases = tuple(a for a in row["aliases"].split(",") if a)
        assert (spec.shape, spec.dtype, spec.optional, spec.aliases) == \
            (expected_shape, row["dtype"], row["optional"] == "1", aliases), key


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_merged_and_passed_through_keys_follow_the_reference_components(name, reference):
    arch, table_name = ARCHITECTURES[name]
    for key, row in read_table(reference / table_name).items():
        spec = arch.key_specs[key]
        if row["component"] in MERGED_AS and not PASSED_THROUGH.search(key):
            assert spec.merged and spec.component == MERGED_AS[row["component"]], key
        else:
            assert not spec.merged, key
            assert spec.component in (row["component"], "scheduler", MERGED_AS.get(row["component"])), key


@pytest.mark.parametrize("arch", [SD1, SDXL, SD3], ids=lambda a: a.name)
def test_every_merged_key_has_blocks_of_its_component_and_a_class_named_after_its_path(arch):
    for spec in arch.key_specs.values():
        if not spec.merged:
            assert not spec.blocks
            continue
        assert spec.blocks and set(spec.blocks) <= set(arch.component(spec.component).blocks), spec.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.class_), spec.name
        path = re.sub(r"(\.|_)(weight|bias)$", "", spec.name).replace(".", "_").lower()
        assert path.endswith(spec.class_) or spec.class_ == "conv_in", spec.name


@pytest.mark.parametrize("arch", [SD1, SDXL, SD3], ids=lambda a: a.name)
def test_keys_of_one_class_are_the_same_kind_of_tensor(arch):
    kinds: dict[tuple[str, str], set] = {}
    for spec in arch.key_specs.values():
        if spec.merged:
            suffix = re.search(r"(weight|bias)?$", spec.name).group()
            kinds.setdefault((spec.component, spec.class_), set()).add((suffix, len(spec.shape)))
    for (component, class_), found in kinds.items():
        suffixes = [s for s, _ in found]
        assert len(found) == len(set(suffixes)), (component, class_, found)


def test_required_class_names():
    assert {"mlp_fc1", "mlp_fc2", "self_attn_q_proj", "layer_norm1", "final_layer_norm"} <= set(SD1.classes["txt"])
    assert {"attn1_to_q", "attn2_to_k", "ff_net_0_proj", "proj_in", "norm1", "in_layers_2",
            "emb_layers_1"} <= set(SD1.classes["unet"])


@pytest.mark.parametrize("arch, components", [
    (SD1, {"txt": 12, "unet": None}), (SDXL, {"txt": 12, "txt2": 32, "unet": None}),
    (SD3, {"txt": 12, "txt2": 32, "t5xxl": 24, "unet": 24}),
], ids=["sd1", "sdxl", "sd3"])
def test_components_and_blocks_have_the_sd_mecha_names(arch, components):
    assert [c.name for c in arch.components] == list(components)
    for component in arch.components:
        count = components[component.name]
        if count is None:  # a UNet: in*, mid, out*
            levels = 12 if arch.name == "sd1" else 9
            expected = [f"in{i}" for i in range(levels)] + ["mid"] + [f"out{i}" for i in range(levels)]
        else:
            expected = [f"in{i}" for i in range(count)]
        assert list(component.blocks) == expected


def test_a_pruned_sd1_file_has_1131_keys_and_1_07_g_parameters():
    pruned = selected(SD1.key_specs.values(), optional=False, pruned=PRUNED_COMPONENTS)
    assert len(pruned) == 1131
    assert {s.component for s in pruned} == {"txt", "unet", "vae"}
    assert round(sum(math.prod(s.shape) for s in pruned) / 1e9, 2) == 1.07
