"""A pytest plugin for testing mecha plugins (opt-in: ``pytest_plugins = ["mecha_core.testing"]``).

A plugin's tests should not depend on what else happens to be installed, nor on the developer's
config file, and should call its objects exactly the way a merge does. This module gives them that.

Fixtures:

- ``mecha_plugins``: a fresh plugin set holding only the core's built-ins (no installed entry point
  is loaded), strict (a broken plugin raises), in use by all of mecha for the duration of the test;
  ``mecha_plugins.register(my_plugin, "name")`` adds a plugin module or object for this test only.
  The user's config file and ``MECHA_MODELS_DIR`` are hidden from the test.
- ``mecha_cli``: runs ``mecha ARGS...`` in-process against that plugin set and returns a
  :class:`CliResult` (exit status, stdout, stderr).

Helpers:

- :func:`as_plugin`: a plugin object from loose spec objects (``as_plugin(my_method, my_arch)``).
- :func:`tiny_model`: a small random state dict of an architecture, with its real key names.
- :func:`write_model`: save a state dict as a safetensors file.
- :func:`check_architecture` and :func:`check_merge_method`: the rules every architecture and
  every merge method must keep, checked in one call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .architecture import Architecture
from .cli import main
from .dtypes import is_float_name
from .hookspecs import hookimpl
from .lazy_input import LazyInput
from .merge_method import MergeMethod
from .output_file import save_tensors
from .plugins import HOOKS, Plugins, get_plugins, load_plugins, spec_type_name, using_plugins
from .recipe import normalize_hyper


@pytest.fixture
def mecha_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugins]:
    """A plugin set with only the core's built-ins, used by mecha while the test runs."""
    monkeypatch.setenv("MECHA_CONFIG", str(tmp_path_factory.mktemp("mecha-config") / "config.toml"))
    monkeypatch.delenv("MECHA_MODELS_DIR", raising=False)
    monkeypatch.delenv("MECHA_STRICT_PLUGINS", raising=False)
    plugins = load_plugins(entry_points=[], strict=True)
    with using_plugins(plugins):
        yield plugins


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What one ``mecha`` command did."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        """Stdout parsed as JSON (for ``--json`` commands)."""
        return json.loads(self.out)


@pytest.fixture
def mecha_cli(mecha_plugins: Plugins, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``mecha_cli("methods", "--json")``: run the CLI in-process on the test's plugin set.

    The status is what the ``mecha`` process would exit with (argparse's 0 for ``--help``, 2 for a usage
    error). Warnings go to pytest's warning capture (use ``pytest.warns``), not to ``err``.
    """
    def run(*args: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()  # what the test printed before is not the command's output
        try:
            status = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse exits on --help and on usage errors
            status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)

    return run


def as_plugin(*objects: Any) -> object:
    """A plugin object whose hooks return `objects`, each through the hook for its kind.

    ``mecha_plugins.register(as_plugin(my_method, my_arch), "mine")`` registers loose spec objects
    without writing a module or class with ``@hookimpl`` functions.
    """
    grouped: dict[str, list[Any]] = {}
    for item in objects:
        hook = next((hook for hook, _, spec_type in HOOKS.values() if isinstance(item, spec_type)), None)
        if hook is None:
            kinds = ", ".join(spec_type_name(spec_type) for _, _, spec_type in HOOKS.values())
            raise TypeError(f"as_plugin() takes {kinds} objects, got {item!r}")
        grouped.setdefault(hook, []).append(item)
    return types.SimpleNamespace(**{hook: hookimpl(_returning(items)) for hook, items in grouped.items()})


def _returning(items: list[Any]) -> Callable[[], list[Any]]:
    return lambda: list(items)


def tiny_model(arch: str | Architecture, *, seed: int = 0, dtype: Any = None,
               plugins: Plugins | None = None) -> dict[str, Any]:
    """A random state dict of `arch` with every dimension shrunk (real key names); an architecture
    named is looked up in `plugins` (None: the set in use)."""
    import torch
    architecture = arch if isinstance(arch, Architecture) else (plugins or get_plugins()).architectures.get(arch)
    if architecture.generate is None:
        raise ValueError(f"architecture {architecture.name!r} has no generator")
    return architecture.generate(seed=seed, dtype=dtype or torch.float32, tiny=True)


def write_model(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a state dict as a safetensors file and return its path."""
    return save_tensors(tensors, path, metadata)


def check_architecture(arch: Architecture, *, seed: int = 0) -> dict[str, Any]:
    """Check that an architecture's declaration is consistent and that its generator agrees with it.

    Raises AssertionError naming the first problem; returns the tiny model it generated (empty when
    the architecture has no generator). Detection, block-wise hyperparameters and ``mecha demo`` all
    rely on these rules.
    """
    import torch
    specs = arch.key_specs  # refuses duplicate keys and undeclared components or blocks
    for component in arch.components:
        used = {block for spec in specs.values() if spec.merged and spec.component == component.name
                for block in spec.blocks}
        unused = [block for block in component.blocks if block not in used]
        assert not unused, f"architecture {arch.name!r}: blocks of component {component.name!r} hold no key: {unused}"
    if arch.generate is None:
        return {}
    tensors = arch.generate(seed=seed, dtype=torch.float32, tiny=True)
    names = {arch.canonical(name): name for name in tensors}
    unknown = sorted(name for name in names if name not in specs)
    missing = sorted(name for name, spec in specs.items() if not spec.optional and name not in names)
    assert not unknown, f"architecture {arch.name!r}: the generator writes keys the architecture lacks: {unknown[:5]}"
    assert not missing, f"architecture {arch.name!r}: the generator leaves out required keys: {missing[:5]}"
    for name, stored in names.items():
        spec, tensor = specs[name], tensors[stored]
        assert tensor.dim() == len(spec.shape), (
            f"architecture {arch.name!r}: key {name!r} has {tensor.dim()} dimensions, declared {len(spec.shape)} "
            f"({list(spec.shape)}); tiny=True shrinks dimensions, it keeps their number")
        expected = torch.float32 if is_float_name(spec.dtype) else getattr(torch, spec.dtype)
        assert tensor.dtype == expected, f"architecture {arch.name!r}: key {name!r} is {tensor.dtype}, expected {expected}"
    assert arch.match(tensors).matches, f"architecture {arch.name!r} does not recognize its own generated model"
    half = arch.generate(seed=seed, dtype=torch.float16, tiny=True)
    assert all(half[stored].dtype == torch.float16 for name, stored in names.items() if is_float_name(specs[name].dtype)), \
        f"architecture {arch.name!r}: generate(dtype=torch.float16) must give float16 floating-point keys"
    again = arch.generate(seed=seed, dtype=torch.float32, tiny=True)
    assert all(torch.equal(again[name], tensor) for name, tensor in tensors.items()), \
        f"architecture {arch.name!r}: generate() with one seed must give the same tensors every time"
    return tensors


def check_merge_method(method: MergeMethod, *, shape: tuple[int, ...] = (6, 7), seed: int = 0,
                       **hypers: Any) -> Any:
    """Call a merge method the way a merge does and check the rules every method must keep.

    Random float32 inputs of `shape` (three models for a ``*models`` method), the defaults or the
    given `hypers`, and the context a merge passes. Checked: the result is a floating-point tensor of
    the inputs' shape; no input is modified in place; two calls with one seed agree (merges are
    reproducible); a ``lazy_inputs`` method, given its inputs as :class:`LazyInput` as a merge does,
    gives the same values when called on plain tensors; an ``elementwise`` method gives the same values
    on flat chunks as on the whole tensor, which is what that promise lets the scheduler do; and a
    method declaring ``coefficients``
    gives the linear combination they describe (the scheduler computes that instead of calling it).
    Returns the result; raises AssertionError naming the broken rule.
    """
    import torch
    fixed = sum(1 for spec in method.inputs if not spec.variadic)
    count = fixed + (3 if method.variadic is not None else 0)
    for name in hypers:
        method.hyper(name)  # an unknown name raises with the nearest valid ones
    values: dict[str, Any] = {}
    for spec in method.hypers:
        value = hypers.get(spec.name, spec.default)
        values[spec.name] = None if value is None else normalize_hyper(method, spec, value, count)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=generator) for _ in range(count)]
    originals = [tensor.clone() for tensor in inputs]

    def call(args: list[Any]) -> Any:
        context = {"key": "check.weight", "device": torch.device("cpu"), "dtype": torch.float32,
                   "generator": torch.Generator().manual_seed(seed), "cache": {}}
        if method.lazy_inputs:  # as a merge gives them
            args = [LazyInput.of(arg) for arg in args]
        return method.invoke(args, values, context)

    result = call(inputs)
    where = f"merge method {method.name!r}"
    if method.lazy_inputs:
        direct = method.invoke(inputs, values, {"key": "check.weight", "device": torch.device("cpu"),
                                                "dtype": torch.float32, "cache": {},
                                                "generator": torch.Generator().manual_seed(seed)})
        torch.testing.assert_close(direct, result, rtol=0, atol=0,
                                   msg=f"{where} declares lazy_inputs but gives other values when called on "
                                       f"tensors; wrap its inputs with LazyInput.of, which takes either")
    assert isinstance(result, torch.Tensor), f"{where} returned {type(result).__name__}, expected a tensor"
    assert tuple(result.shape) == tuple(shape), f"{where} returned shape {list(result.shape)}, expected {list(shape)}"
    assert result.is_floating_point(), f"{where} returned {result.dtype}, expected a floating-point tensor"
    for position, (tensor, original) in enumerate(zip(inputs, originals)):
        assert torch.equal(tensor, original), (
            f"{where} modified input {position} in place; inputs are shared with other methods and other keys: "
            f"compute new tensors (a - b, a.lerp(b, t), x.clone().mul_(k)) instead")
    torch.testing.assert_close(call(inputs), result, rtol=0, atol=0,
                               msg=f"{where} gives different results for one seed; draw randomness from the "
                                   f"`generator` context parameter")
    if method.elementwise and not method.wants_generator and "cache" not in method.context:
        flat = [tensor.reshape(-1) for tensor in inputs]
        numel = flat[0].numel()
        bounds = [0, min(5, numel), min(numel // 2 + 3, numel), numel]
        chunks = [call([f[start:stop] for f in flat]) for start, stop in zip(bounds, bounds[1:]) if stop > start]
        torch.testing.assert_close(torch.cat([c.reshape(-1) for c in chunks]), result.reshape(-1),
                                   msg=f"{where} is declared elementwise but gives other values on chunks of a "
                                       f"tensor; drop elementwise=True or compute each entry from the same "
                                       f"entry of each input only")
    if method.coefficients is not None:
        coefficients = [float(c) for c in method.coefficients(count, **values)]
        assert len(coefficients) == count, f"{where} gives {len(coefficients)} coefficients for {count} inputs"
        combined = sum(c * tensor.double() for c, tensor in zip(coefficients, inputs))
        torch.testing.assert_close(result.double(), combined, rtol=1e-5, atol=1e-6,
                                   msg=f"{where} declares coefficients {coefficients} but its function gives other "
                                       f"values; the scheduler adds the inputs with those coefficients instead of "
                                       f"calling it")
    return result
