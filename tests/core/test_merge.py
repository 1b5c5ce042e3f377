"""Merging: numeric results on dicts and files, pass-through keys, missing keys, threads, chunks, dtypes."""

from __future__ import annotations

import hashlib

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core.testing import write_model

from .conftest import toy_model


def test_weighted_sum_of_dicts_matches_the_formula(plugins):
    a, b = toy_model(seed=1), toy_model(seed=2)
    out = mc.merge(mc.weighted_sum(a, b, alpha=0.3), save_dtype=torch.float32)
    for key in ("embed.weight", "layers.0.weight", "head.weight"):
        expected = 0.7 * a[key].double() + 0.3 * b[key].double()
        torch.testing.assert_close(out[key].double(), expected, rtol=0, atol=1e-6)
    assert out["decoder.weight"].equal(a["decoder.weight"])  # passes through from the first model
    assert out["step"].item() == 8 and out["step"].dtype == torch.int64  # integer: copied, not averaged


def test_merge_to_file_is_a_valid_safetensors_with_the_recipe(plugins, tmp_path):
    a = write_model(toy_model(seed=1), tmp_path / "a.safetensors")
    b = write_model(toy_model(seed=2), tmp_path / "b.safetensors")
    recipe = mc.add_difference(a, mc.subtract(b, a), alpha=0.5)
    path = mc.merge(recipe, tmp_path / "out.safetensors", threads=2)
    with safetensors.safe_open(str(path), "pt") as f:  # the reference implementation reads it
        assert set(f.keys()) == set(toy_model())
        assert f.metadata()["mecha_recipe"] == mc.serialize(recipe).replace(str(tmp_path) + "/", "")
        got = f.get_tensor("layers.1.weight")
        assert f.get_tensor("decoder.weight").dtype == torch.float32  # pass-through keeps its dtype
    ta, tb = toy_model(seed=1), toy_model(seed=2)
    expected = (ta["layers.1.weight"] + 0.5 * (tb["layers.1.weight"] - ta["layers.1.weight"])).half()
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_models_resolved_by_name_in_models_dirs(plugins, tmp_path):
    write_model(toy_model(fill=1), tmp_path / "one.safetensors")
    write_model(toy_model(fill=3), tmp_path / "three.safetensors")
    out = mc.merge(mc.n_average("one", "three"), models_dir=tmp_path, save_dtype="fp32")
    assert out["layers.0.weight"].unique().tolist() == [2.0]


def test_missing_model_lists_where_it_looked(plugins, tmp_path):
    with pytest.raises(mc.ModelFileError, match="not found; tried .*nope.safetensors"):
        mc.merge(mc.n_average("nope", "nope2"), models_dir=tmp_path)


def test_threads_and_chunks_give_identical_bytes(plugins, tmp_path):
    big = {"layers.0.weight": torch.randn(300, 301), "layers.0.bias": torch.randn(301)}
    models = [write_model({k: v + i for k, v in big.items()}, tmp_path / f"m{i}.safetensors") for i in range(3)]
    recipe = mc.weighted_sum(mc.n_average(*models), models[0], alpha=0.25)
    digests = set()
    for threads, budget in ((1, None), (4, None), (1, 4096), (4, 4096)):
        out = tmp_path / f"out-{threads}-{budget}.safetensors"
        mc.merge(recipe, out, threads=threads, memory_budget=budget)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_chunked_path_is_used_and_correct(plugins, tmp_path):
    calls = []

    @mc.merge_method(elementwise=True)
    def spy(a: mc.Same, b: mc.Same) -> mc.Same:
        calls.append(a.shape)
        return a + b

    a, b = torch.arange(300_000.0).reshape(600, 500), torch.ones(600, 500)
    out = mc.merge(spy({"x.weight": a}, {"x.weight": b}), save_dtype="fp32", memory_budget=1 << 20)
    assert len(calls) > 1 and all(len(shape) == 1 for shape in calls)  # flat chunks
    # of whole rows, 32 at a time (a LoRA composes a chunk's rows, 32 per matmul)
    assert all(shape[0] % (500 * 32) == 0 for shape in calls[:-1]) and sum(s[0] for s in calls) == 300_000
    assert out["x.weight"].equal(a + b)


def test_a_method_declaring_coefficients_is_computed_by_adding_its_inputs(plugins, tmp_path):
    calls = []

    @mc.merge_method(elementwise=True, coefficients=lambda count, alpha: (1 - alpha, alpha))
    def blend(a: mc.Same, b: mc.Same, *, alpha: float = 0.5) -> mc.Same:
        calls.append(1)
        return a * (1 - alpha) + b * alpha

    a, b = toy_model(seed=1), toy_model(seed=2)
    paths = [write_model(m, tmp_path / f"{i}.safetensors") for i, m in enumerate((a, b))]
    for budget in (None, 4096):  # whole keys and chunks
        out = mc.merge(blend(*paths, alpha=0.25), save_dtype="fp32", memory_budget=budget)
        for key in ("embed.weight", "layers.0.weight", "head.weight"):
            torch.testing.assert_close(out[key].double(), 0.75 * a[key].double() + 0.25 * b[key].double(),
                                       rtol=0, atol=1e-6)
    assert calls == []


@pytest.mark.parametrize("coefficients, message", [
    (lambda count: (1.0,), "merge method 'bad' gave 1 coefficients for 2 inputs at key"),
    (lambda count: 1 / 0, "merge method 'bad': its coefficients failed on key .*ZeroDivisionError"),
])
def test_broken_coefficients_name_the_method_and_the_key(plugins, coefficients, message):
    bad = mc.merge_method(lambda a, b: a + b, name="bad", elementwise=True, coefficients=coefficients)
    with pytest.raises(mc.MergeError, match=message):
        mc.merge(bad(toy_model(seed=1), toy_model(seed=2)))


def test_a_node_used_twice_is_computed_once_per_key(plugins):
    calls = []

    @mc.merge_method
    def count(a: mc.Same) -> mc.Same:
        calls.append(1)
        return a * 2

    doubled = count(toy_model(fill=1))
    out = mc.merge(mc.n_average(doubled, doubled), save_dtype="fp32")
    merged_keys = [k for k, v in out.items() if v.is_floating_point() and k != "decoder.weight"]
    assert len(calls) == len(merged_keys) == 6
    assert out["head.weight"].unique().tolist() == [2.0]


def test_missing_key_falls_back_to_the_first_input_in_the_same_space(plugins):
    a = toy_model(fill=1)
    b = {k: v for k, v in toy_model(fill=3).items() if k != "layers.0.weight"}
    out = mc.merge(mc.weighted_sum(b, a, alpha=0.5), save_dtype="fp32")
    assert out["layers.0.weight"].unique().tolist() == [1.0]  # only a has it: a's value
    assert out["head.weight"].unique().tolist() == [2.0]


def test_delta_without_the_key_leaves_the_model_unchanged(plugins):
    base = toy_model(fill=1)
    delta = mc.subtract({"head.weight": torch.full((3, 4), 5.0)}, {"head.weight": torch.full((3, 4), 1.0)})
    out = mc.merge(mc.add_difference(base, delta, alpha=0.5), save_dtype="fp32")
    assert out["head.weight"].unique().tolist() == [3.0]
    assert out["layers.0.weight"].unique().tolist() == [1.0]


def test_fallback_model_provides_pass_through_keys(plugins):
    a, b, fallback = toy_model(fill=1), toy_model(fill=3), toy_model(fill=9)
    out = mc.merge(mc.weighted_sum(a, b), fallback_model=fallback, save_dtype="fp32")
    assert out["decoder.weight"].unique().tolist() == [9.0]
    assert out["layers.0.weight"].unique().tolist() == [2.0]


def test_drop_leaves_out_components_and_patterns(plugins):
    out = mc.merge(mc.weighted_sum(toy_model(1), toy_model(2)), drop=["vae", "layers.1.*"])
    assert "decoder.weight" not in out and "layers.1.weight" not in out and "layers.0.weight" in out


@pytest.mark.parametrize("work, save", [("fp64", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "bf16")])
def test_work_and_save_dtypes(plugins, work, save):
    a, b = toy_model(seed=1), toy_model(seed=2)
    seen = []

    @mc.merge_method
    def spy(x: mc.Same, y: mc.Same) -> mc.Same:
        seen.append(x.dtype)
        return (x + y) / 2

    out = mc.merge(spy(a, b), work_dtype=work, save_dtype=save)
    names = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert set(seen) == {names[work]}
    assert out["layers.0.weight"].dtype == names[save]
    expected = ((a["layers.0.weight"].to(names[work]) + b["layers.0.weight"].to(names[work])) / 2).to(names[save])
    assert out["layers.0.weight"].equal(expected)


def test_per_node_dtype_override(plugins):
    seen = []

    @mc.merge_method
    def spy(x: mc.Same) -> mc.Same:
        seen.append(x.dtype)
        return x

    mc.merge(mc.n_average(spy(toy_model(1), dtype="fp64"), toy_model(2)))
    assert set(seen) == {torch.float64}


def test_context_is_passed_only_when_asked(plugins):
    seen = {}

    @mc.merge_method
    def keyed(a: mc.Same, *, key: str, generator=None) -> mc.Same:
        seen[key] = torch.rand((), generator=generator).item()
        return a

    @mc.merge_method
    def everything(a: mc.Same, **context) -> mc.Same:
        assert set(context) == {"key", "device", "dtype", "generator", "cache"}
        return a

    mc.merge(keyed(toy_model(1)))
    first = dict(seen)
    mc.merge(keyed(toy_model(1)), threads=3)
    assert seen == first and len(set(first.values())) == len(first)  # seeded per key, thread-independent
    mc.merge(everything(toy_model(1)))


def test_mixed_architectures_are_refused_before_reading(plugins, tmp_path):
    toy = write_model(toy_model(1), tmp_path / "toy.safetensors")
    other = write_model({"unrelated.weight": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(mc.MergeError, match="different architectures: .*other.safetensors is not a known "
                                            "architecture.*toy.safetensors is toy"):
        mc.merge(mc.weighted_sum(toy, other))


def test_generic_architecture_merges_any_model(plugins, tmp_path):
    a = {"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4), "model.layers.1.mlp.up_proj.weight": torch.ones(4, 4),
         "model.embed_tokens.weight": torch.ones(8, 4)}
    b = {k: v * 3 for k, v in a.items()}
    alpha = {"generic_model_block_model_layers_1": 1.0, "generic_model_class_model_embed_tokens": 0.5}
    out = mc.merge(mc.weighted_sum(mc.model(a), mc.model(b), alpha=alpha), save_dtype="fp32")
    assert out["model.layers.0.mlp.up_proj.weight"].unique().tolist() == [1.0]  # no value: 0
    assert out["model.layers.1.mlp.up_proj.weight"].unique().tolist() == [3.0]
    assert out["model.embed_tokens.weight"].unique().tolist() == [2.0]


def test_shape_mismatch_names_the_key_and_files(plugins, tmp_path):
    a = write_model(toy_model(1), tmp_path / "a.safetensors")
    wrong = toy_model(2)
    wrong["head.weight"] = torch.ones(5, 4)
    b = write_model(wrong, tmp_path / "b.safetensors")
    with pytest.raises(mc.MergeError, match=r"key 'head.weight' has different shapes.*a.safetensors \[3, 4\].*"
                                            r"b.safetensors \[5, 4\]"):
        mc.merge(mc.weighted_sum(a, b), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_space_errors_after_detection_name_the_model(plugins, tmp_path):
    a = write_model(toy_model(1), tmp_path / "a.safetensors")
    with pytest.raises(mc.RecipeError, match="input 'b' must be in delta space, but it is in weight space"):
        mc.merge(mc.add_difference(a, mc.model(str(a))))


def test_unfilled_parameters_are_refused(plugins):
    with pytest.raises(mc.RecipeError, match="parameters to fill: p"):
        mc.merge(mc.weighted_sum(toy_model(1), mc.parameter("p")))


def test_unknown_block_names_are_refused_with_a_suggestion(plugins):
    with pytest.raises(mc.MechaError, match="unknown block/class key 'toy_body_block_b2'.*did you mean"):
        mc.merge(mc.weighted_sum(toy_model(1), toy_model(2), alpha={"toy_body_block_b2": 1}))


def test_a_method_that_raises_names_itself_and_the_key(plugins):
    @mc.merge_method
    def broken(a: mc.Same) -> mc.Same:
        raise ValueError("boom")

    with pytest.raises(mc.MergeError, match="merge method 'broken' failed on key '.*': ValueError: boom"):
        mc.merge(broken(toy_model(1)))


def test_nonfinite_results_warn_or_fail(plugins):
    a = toy_model(fill=1)
    b = toy_model(fill=1)
    b["head.weight"][0, 0] = float("nan")
    _, report = mc.merge.__globals__["merge_with_report"](mc.weighted_sum(a, b), None)
    assert any("head.weight" in note and "NaN" in note for note in report.notes)
    with pytest.raises(mc.MergeError, match="key 'head.weight': the result holds NaN or inf"):
        mc.merge(mc.weighted_sum(a, b), nonfinite="fail")


def test_nonfinite_skip_treats_the_input_key_as_missing(plugins):
    a, b, c = toy_model(fill=1), toy_model(fill=3), toy_model(fill=5)
    b["head.weight"][1, 2] = float("inf")
    _, report = mc.merge.__globals__["merge_with_report"](mc.n_average(a, b, c), None, nonfinite="skip",
                                                          save_dtype="fp32")
    out = _
    assert out["head.weight"].unique().tolist() == [3.0]  # the mean of the inputs that remain, a and c
    assert out["layers.0.weight"].unique().tolist() == [3.0]
    assert any("head.weight" in note and "treated as missing" in note for note in report.notes)
    nan_everywhere = {k: v.clone() for k, v in a.items()}
    nan_everywhere["head.weight"][0, 0] = float("nan")
    with pytest.raises(mc.MergeError, match="every input that could provide it holds NaN or inf"):
        mc.merge(mc.weighted_sum(nan_everywhere, nan_everywhere), nonfinite="skip")


def test_variadic_methods_leave_out_models_lacking_a_key(plugins):
    @mc.merge_method
    def weighted(base: mc.Same, *models: mc.Same, weight: tuple[float, ...] = 1.0) -> mc.Same:
        return base + sum(w * m for w, m in zip(weight, models))

    base, one, three = toy_model(fill=10), toy_model(fill=1), toy_model(fill=3)
    del one["head.weight"]
    out = mc.merge(weighted(base, one, three, weight=[0.5, 2.0]), save_dtype="fp32")
    assert out["layers.0.weight"].unique().tolist() == [10 + 0.5 + 6]
    assert out["head.weight"].unique().tolist() == [10 + 6]  # the weight 2.0 stays with its model
    out = mc.merge(mc.n_average(one, three), save_dtype="fp32")
    assert out["head.weight"].unique().tolist() == [3.0]


def test_the_cache_is_shared_by_calls_on_the_same_inputs_across_merges(plugins):
    computed = []

    @mc.merge_method
    def slow(a: mc.Same, *, alpha: float = 1.0, key: str, cache=None) -> mc.Same:
        if cache is not None and "value" in cache:
            return cache["value"] * alpha
        computed.append(key)
        value = a * 2
        if cache is not None:
            cache["value"] = value
        return value * alpha

    model = toy_model(fill=1)
    cache: dict = {}
    mc.merge(slow(model), cache=cache)
    first = len(computed)
    out = mc.merge(slow(model), cache=cache, save_dtype="fp32")
    assert len(computed) == first == 6 and out["head.weight"].unique().tolist() == [2.0]
    out = mc.merge(slow(model, alpha=0.5), cache=cache, save_dtype="fp32")  # other hyperparameters: reused
    assert len(computed) == 6 and out["head.weight"].unique().tolist() == [1.0]
    mc.merge(slow(toy_model(fill=2)), cache=cache)  # other inputs: computed again
    assert len(computed) == 12
