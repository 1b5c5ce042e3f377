"""``mecha demo`` (a real merge of two small generated models) and ``mecha convert`` (pickle to safetensors).

Not built into the parser: the core's own plugin (:mod:`mecha_core.builtin`) registers them through
``mecha_cli_commands``, as any plugin adds a command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..cli_command import CliCommand
from ..dtypes import TORCH_NAME_TO_CODE
from ..errors import MechaError
from ..merge import merge_with_report
from ..output_file import save_tensors
from ..plugins import get_plugins
from ..recipe import model
from ..recipe_format import serialize
from ..sharded_files import open_tensor_file
from ..tensor_files import PICKLE_SUFFIXES


def _demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.description = ("Write two small random models of an installed architecture into a folder, merge them "
                        "with a weighted_sum recipe, and check every key against the formula.")
    demo.add_argument("--arch", help="architecture of the models (default: the first installed one that can "
                                     "generate models, else a toy MLP)")
    demo.add_argument("--alpha", type=float, default=0.3, help="weighted_sum alpha (default: 0.3)")
    demo.add_argument("--keep", metavar="DIR", help="write the files into DIR and keep them")


def _convert_arguments(convert: argparse.ArgumentParser) -> None:
    convert.description = ("Load a PyTorch pickle with torch.load(weights_only=True), which refuses to run code, "
                           "and save its tensors as safetensors.")
    convert.add_argument("file")
    convert.add_argument("-o", "--output", help="output file (default: FILE with .safetensors)")
    convert.set_defaults(output_is_file=True)


def _toy_model(seed: int) -> dict[str, Any]:
    import torch
    generator = torch.Generator().manual_seed(seed)
    tensors = {"embed.weight": torch.randn(64, 32, generator=generator)}
    for layer in range(4):
        tensors[f"layers.{layer}.weight"] = torch.randn(32, 32, generator=generator)
        tensors[f"layers.{layer}.bias"] = torch.randn(32, generator=generator)
    tensors["head.weight"] = torch.randn(10, 32, generator=generator)
    return tensors


def run_demo(args: argparse.Namespace) -> int:
    import torch
    plugins = get_plugins()
    if "weighted_sum" not in plugins.merge_methods:
        raise MechaError("mecha demo needs the merge method weighted_sum: pip install mecha-methods "
                         "(or pip install -r requirements.txt in the repository)")
    weighted_sum = plugins.merge_methods.get("weighted_sum")
    arch_name = args.arch
    if arch_name is None:
        arch_name = next((n for n in plugins.architectures if plugins.architectures.get(n).generate), None)
    if arch_name is not None:
        arch = plugins.architectures.get(arch_name)
        if arch.generate is None:
            raise MechaError(f"architecture {arch_name!r} cannot generate models")
        a, b = (arch.generate(seed=seed, dtype=torch.float16, tiny=True) for seed in (1, 2))
        what = f"two tiny {arch_name} models (real key names, shrunk dimensions)"
    else:
        a, b = (_toy_model(seed) for seed in (1, 2))
        a = {k: v.half() for k, v in a.items()}
        b = {k: v.half() for k, v in b.items()}
        what = "two toy MLPs (no architecture plugin installed: the generic architecture is used)"
    with tempfile.TemporaryDirectory(prefix="mecha-demo-") as temp:
        folder = Path(args.keep) if args.keep else Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(a, folder / "a.safetensors")
        save_tensors(b, folder / "b.safetensors")
        recipe = weighted_sum(model(str(folder / "a.safetensors")), model(str(folder / "b.safetensors")),
                              alpha=args.alpha)
        recipe_path = folder / "demo.mecha"
        recipe_path.write_text(serialize(recipe), encoding="utf-8")
        output = folder / "merged.safetensors"
        print(f"wrote {what} to {folder}")
        print(f"recipe {recipe_path}:")
        print("  " + serialize(recipe).strip().replace("\n", "\n  "))
        started = time.perf_counter()
        merged_keys: set[str] = set()
        _, report = merge_with_report(recipe_path, output,
                                      on_plan=lambda plan: merged_keys.update(k.name for k in plan.keys if k.merge))
        elapsed = time.perf_counter() - started
        print(f"merged into {output}: {report.keys_merged} keys merged, {report.keys_copied} copied, "
              f"in {elapsed:.2f} s")
        worst = _check(output, a, b, args.alpha, merged_keys)
        print(f"checked all {len(a)} keys: merged ones equal (1 - alpha) * a + alpha * b within fp16 rounding "
              f"(largest difference {worst:.1e}), the others are a's, bit for bit")
        if args.keep:
            print(f"kept the files in {folder}; merge again with: mecha merge {recipe_path} -o {output}")
    return 0


def _check(output: Path, a: dict[str, Any], b: dict[str, Any], alpha: float, merged_keys: set[str]) -> float:
    """Compare every key of the output with the formula, computed here in float64."""
    import torch
    worst = 0.0
    with open_tensor_file(output) as merged:
        if set(merged.tensors) != set(a):
            raise MechaError(f"demo check failed: the output has {len(merged.tensors)} keys, the inputs {len(a)}")
        for name in merged.tensors:
            result = merged.read(name)
            if name not in merged_keys:
                if not torch.equal(result, a[name]):
                    raise MechaError(f"demo check failed: copied key {name!r} differs from the first model")
                continue
            expected = (1 - alpha) * a[name].double() + alpha * b[name].double()
            difference = (result.double() - expected).abs().max().item() if result.numel() else 0.0
            tolerance = 1e-3 * max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
            if difference > tolerance:
                raise MechaError(f"demo check failed on key {name!r}: off by {difference}")
            worst = max(worst, difference)
    return worst


def run_convert(args: argparse.Namespace) -> int:
    import torch
    source = Path(args.file)
    if source.suffix.lower() not in PICKLE_SUFFIXES:
        raise MechaError(f"{source}: expected a pickle ({', '.join(PICKLE_SUFFIXES)})")
    if not source.is_file():
        raise MechaError(f"{source}: no such file")
    output = Path(args.output) if args.output else source.with_suffix(".safetensors")
    print(f"mecha: warning: loading {source} with torch.load(weights_only=True): only tensors and plain data are "
          f"accepted, no code runs; convert only files you trust anyway", file=sys.stderr)
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MechaError(f"{source}: cannot be loaded safely (it may hold code, or not be a PyTorch file): "
                         f"{type(error).__name__}: {reason}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise MechaError(f"{source}: holds a {type(data).__name__}, expected a dict of tensors")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and _storable(v)}
    if not tensors:
        raise MechaError(f"{source}: holds no tensors that safetensors can store (expected a dict of dense "
                         f"tensors of a supported dtype)")
    skipped = len(data) - len(tensors)
    save_tensors(tensors, output, inputs=[source])
    print(f"wrote {output}: {len(tensors)} tensors" + (f" ({skipped} other entries left out)" if skipped else ""))
    return 0


DEMO = CliCommand("demo", "merge two small generated models and check the result", run_demo, _demo_arguments)
CONVERT = CliCommand("convert", "convert a pickled .ckpt/.pt file to safetensors", run_convert, _convert_arguments)


def _storable(value: Any) -> bool:
    """Whether a loaded value is a tensor a safetensors file can hold (dense, of a known dtype)."""
    import torch
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta
            and str(value.dtype).removeprefix("torch.") in TORCH_NAME_TO_CODE)
