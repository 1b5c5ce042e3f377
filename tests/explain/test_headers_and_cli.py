"""explain reads headers only; the CLI's text, JSON, --dry-run, --graph, and the peak memory."""

from __future__ import annotations

import math
import sys

import pytest

import mecha_core as mc

from .conftest import write_header_only


@pytest.fixture
def sd1_real_size(plugins):
    """Real-size SD1 key layout (shapes as shipped), required keys only."""
    import mecha_sd1.sd1
    return [spec for spec in mecha_sd1.sd1.keys() if not spec.optional]


def test_files_whose_data_is_garbage_still_explain(sd1_real_size, tmp_path, no_tensor_reads):
    a = write_header_only(tmp_path / "a.safetensors", sd1_real_size, "float16", garbage=False)
    b = write_header_only(tmp_path / "b.safetensors", sd1_real_size, "float16", garbage=False)
    explanation = mc.explain(mc.weighted_sum(a, b, alpha=0.3), threads=2)
    assert [(m.architecture, m.type, m.dtypes) for m in explanation.models] == \
        [("sd1", "base", {"float16": len(sd1_real_size)})] * 2
    merged = {c.component: c.merged for c in explanation.plan.components}
    assert merged == {"txt": 196, "unet": 686, "vae": 0}
    copied = {c.component: c.copied for c in explanation.plan.components}
    assert copied == {"txt": {}, "unet": {}, "vae": {"A": 248}}
    stored = sum(2 * math.prod(s.shape) for s in sd1_real_size if s.dtype == "float32")
    merged_bytes = sum(2 * math.prod(s.shape) for s in sd1_real_size if s.merged and s.dtype == "float32")
    # merged keys are read from both files, the rest from the first
    assert explanation.plan.bytes_read == stored + merged_bytes
    for share in explanation.shares:
        assert share.coefficients == {"A": 0.7, "B": 0.3}


def test_garbage_bytes_past_the_header(plugins, tmp_path, no_tensor_reads):
    from mecha_core.testing import tiny_model
    specs = [mc.KeySpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
             for name, t in tiny_model("sd1").items()]
    a = write_header_only(tmp_path / "a.safetensors", specs)
    b = write_header_only(tmp_path / "b.safetensors", specs)
    explanation = mc.explain(mc.add_difference(a, mc.subtract(b, a), alpha=0.5))
    assert all(s.coefficients == {"A": 0.5, "B": 0.5} for s in explanation.shares)


def test_peak_memory_is_the_schedulers_budget(sd1_real_size, tmp_path, no_tensor_reads):
    from mecha_core.direct_writes import STAGE_BYTES, STAGES
    a = write_header_only(tmp_path / "a.safetensors", sd1_real_size, garbage=False)
    b = write_header_only(tmp_path / "b.safetensors", sd1_real_size, garbage=False)
    c = write_header_only(tmp_path / "c.safetensors", sd1_real_size, garbage=False)
    writer = (STAGES + 2) * STAGE_BYTES
    # ties is not elementwise: a worker holds a whole key, at 4 bytes x (4 nodes + 3 inputs + 2) an
    # element, less each model's value and converted copy: ties reads its models range by range
    plan = mc.explain(mc.ties_merge(a, b, c), threads=2).plan
    largest = sorted((math.prod(s.shape) for s in sd1_real_size if s.merged), reverse=True)
    assert plan.bytes_per_element == 4 * 9 and plan.whole_key_bytes_per_element == 4 * 3
    assert plan.lazy_methods == ["ties_merge"]
    assert plan.peak_memory == 12 * (largest[0] + largest[1]) + writer
    # karcher is neither elementwise nor lazy: the whole key with every input
    plan = mc.explain(mc.karcher(a, b, c), threads=2).plan
    assert plan.whole_key_bytes_per_element == plan.bytes_per_element == 4 * 9
    assert plan.peak_memory == 36 * (largest[0] + largest[1]) + writer
    # weighted_sum is: every worker holds at most a chunk of the 32 MiB budget
    budget = 32 << 20
    plan = mc.explain(mc.weighted_sum(a, b), threads=2, memory_budget=budget).plan
    assert plan.bytes_per_element == 4 * 7 and plan.chunk_elements == budget // 28
    assert 2 * (budget - 28 * 64 * 3 * 3 * 2560) < plan.peak_memory - writer <= 2 * budget


def test_cli_text_json_and_dry_run(plugins, mecha_cli, tmp_path, no_tensor_reads, monkeypatch):
    from mecha_core.testing import tiny_model
    specs = [mc.KeySpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
             for name, t in tiny_model("sd1").items()]
    for name in "ab":
        write_header_only(tmp_path / f"{name}.safetensors", specs)
    recipe = tmp_path / "r.mecha"
    recipe.write_text('model "a"\nmodel "b"\ndict sd1_unet_block_in0=0.2 sd1_unet_default=0.6\n'
                      'merge "weighted_sum" &0 &1 alpha=&2\n')
    monkeypatch.chdir(tmp_path)
    shown = mecha_cli("explain", recipe, "--models-dir", tmp_path)
    assert shown.status == 0, shown.err
    assert "unet in0: 0.8 A + 0.2 B" in shown.out
    assert "in1..out11: 0.4 A + 0.6 B" in shown.out
    assert "txt in0..in11: 1 A" in shown.out  # no txt value: alpha 0 there, a surprise worth seeing
    assert "alpha: unet in0 0.2 | in1..out11 0.6" in shown.out
    data = mecha_cli("explain", recipe, "--models-dir", tmp_path, "--json").json()
    assert data["architecture"] == "sd1" and [m["label"] for m in data["models"]] == ["A", "B"]
    assert {"component": "unet", "blocks": ["in0"], "coefficients": {"A": 0.8, "B": 0.2}, "class_": None} in data["shares"]
    assert data["plan"]["peak_memory"] > 0
    budget = mecha_cli("explain", recipe, "--models-dir", tmp_path, "--json", "--memory-budget", "64").json()["plan"]
    assert budget["chunk_elements"] == (64 << 20) // budget["bytes_per_element"]
    dry = mecha_cli("merge", recipe, "--models-dir", tmp_path, "--dry-run", "-o", tmp_path / "out.safetensors")
    assert dry.status == 0, dry.err
    assert dry.out == shown.out
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob("*.mecha-tmp"))


def test_graph_is_dot(plugins, mecha_cli, tmp_path, no_tensor_reads):
    from mecha_core.testing import tiny_model
    specs = [mc.KeySpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
             for name, t in tiny_model("sd1").items()]
    for name in "abc":
        write_header_only(tmp_path / f"{name}.safetensors", specs)
    recipe = tmp_path / "r.mecha"
    recipe.write_text(mc.serialize(mc.weighted_sum(mc.ties_merge(*(str(tmp_path / f"{n}.safetensors") for n in "abc")),
                                                   str(tmp_path / "a.safetensors"), alpha=0.5)))
    result = mecha_cli("explain", recipe, "--graph", tmp_path / "recipe.dot")
    assert result.status == 0, result.err
    dot = (tmp_path / "recipe.dot").read_text()
    assert dot.startswith("digraph recipe {") and dot.rstrip().endswith("}")
    assert dot.count("shape=ellipse") == 3 and dot.count("shape=box") == 2  # A once, with two edges
    assert 'label="ties_merge' in dot and "style=dashed" in dot  # the nonlinear node stands out
    assert dot.count(" -> ") == 5
    for inputs in (recipe, tmp_path / "b.safetensors"):  # never over the recipe or a model
        before = inputs.read_bytes()
        refused = mecha_cli("explain", recipe, "--graph", inputs)
        assert refused.status == 1 and "refusing to write the output over the input" in refused.err
        assert inputs.read_bytes() == before


def test_plot_without_matplotlib_names_the_extra(plugins, mecha_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    recipe = tmp_path / "r.mecha"
    recipe.write_text('model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    result = mecha_cli("explain", recipe, "--plot", tmp_path / "shares.png")
    assert result.status == 1
    assert "mecha-core[plot]" in result.err and len(result.err.strip().splitlines()) == 1


def test_a_recipe_hundreds_of_merges_deep(plugins, tmp_path):
    import json

    import torch

    from mecha_core.explain_render import render_dot, render_json, render_text
    paths = []
    for index in range(2):
        tensors = {f"layers.{i}.weight": torch.full((2, 2), float(index)) for i in range(2)}
        paths.append(mc.save_tensors(tensors, tmp_path / f"m{index}.safetensors"))
    recipe = mc.model(paths[0])
    for _ in range(400):
        recipe = mc.weighted_sum(recipe, paths[1], alpha=0.01)
    explanation = mc.explain(recipe)
    for share in explanation.shares:
        assert share.coefficients == pytest.approx({"A": 0.99 ** 400, "B": 1 - 0.99 ** 400})
    assert len(explanation.recipe) == 402  # A, B, and each merge once
    assert json.loads(render_json(explanation))["recipe"][-1]["method"] == "weighted_sum"
    assert render_text(explanation).count("weighted_sum(alpha=0.01)") == 400
    assert render_dot(explanation).count("-> ") == 800
