"""``mecha info``, ``mecha inspect``, ``mecha plugins`` and ``mecha methods``: what is installed and what a file is."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

from ..architecture import GENERIC, Architecture, absent_components, generic_architecture, match_by_keys
from ..errors import MechaError, printable
from ..merge import stored_recipe
from ..merge_method import MergeMethod
from ..planning import detect_model
from ..plugins import Plugins, get_plugins
from ..sharded_files import open_tensor_file


def register(commands: Any, common: argparse.ArgumentParser, plugins: Plugins) -> None:
    info = commands.add_parser("info", parents=[common], help="architectures, their components, blocks and classes",
                               description="Without ARCH, list the architectures and model types; with ARCH, "
                                           "show its components with their blocks and classes.")
    info.add_argument("arch", nargs="?", help="an architecture name, e.g. sd1")
    info.add_argument("-v", "--verbose", action="store_true", help="also list the keys of each block and class")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=run_info)

    inspect = commands.add_parser("inspect", parents=[common], help="what a model file is",
                                  description="Detect a file's architecture and model type; show its keys, "
                                              "dtypes, size and the recipe that made it.")
    inspect.add_argument("file")
    inspect.add_argument("-v", "--verbose", action="store_true", help="list every unknown and missing key")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=run_inspect)

    listing = commands.add_parser("plugins", parents=[common], help="installed plugins and their status",
                                  description="List installed plugins, what they provide and whether they loaded.")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_plugins)

    methods = commands.add_parser("methods", parents=[common], help="merge methods, or one method in detail",
                                  description="List merge methods with a one-line summary, or show one in full.")
    methods.add_argument("name", nargs="?")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(handler=run_methods)


# info ------------------------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    if args.arch is None:
        archs = {name: plugins.architectures.get(name) for name in plugins.architectures}
        types = {name: plugins.model_types.get(name) for name in plugins.model_types}
        if args.json:
            print(json.dumps({"architectures": {n: a.summary for n, a in archs.items()},
                              "model_types": {n: {"space": t.space.value, "summary": t.summary}
                                              for n, t in types.items()}}, indent=2))
            return 0
        print("Architectures:")
        for name, arch in archs.items():
            print(f"- {name}: {arch.summary}" if arch.summary else f"- {name}")
        print(f"- {GENERIC}: any other model; keys, blocks and classes derived from its header "
              f"(`mecha inspect FILE` shows them)")
        print("Model types:")
        for name, model_type in types.items():
            print(f"- {name} ({model_type.space.value} space): {model_type.summary}")
        return 0
    args.arch = args.arch.lower()  # architecture names are lowercase; sd-mecha 0.0.x matched them in any case
    if args.arch == GENERIC:
        raise MechaError(f"the {GENERIC} architecture is derived from each file; run `mecha inspect FILE -v`")
    arch = plugins.architectures.get(args.arch)
    if arch.is_family and not args.json:
        print(f"{arch.name}: its blocks and classes depend on each model; `mecha inspect MODEL -v` shows a model's")
    if args.json:
        print(json.dumps(architecture_json(arch), indent=2))
    else:
        print_architecture(arch, verbose=args.verbose)
    return 0


def architecture_json(arch: Architecture) -> dict[str, Any]:
    return {
        "architecture": arch.name,
        "summary": arch.summary,
        "components": {c.name: {"blocks": list(c.blocks), "classes": list(arch.classes[c.name])}
                       for c in arch.components},
        "optional_components": list(arch.optional_components),
        "keys": {name: {"shape": list(spec.shape), "dtype": spec.dtype, "component": spec.component,
                        "blocks": list(spec.blocks), "class": spec.class_, "merged": spec.merged,
                        "optional": spec.optional, "aliases": list(spec.aliases)}
                 for name, spec in arch.key_specs.items()},
    }


def print_architecture(arch: Architecture, *, verbose: bool) -> None:
    by_block: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    by_class: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    passthrough: dict[str, list[str]] = collections.defaultdict(list)
    for name, spec in arch.key_specs.items():
        if not spec.merged:
            passthrough[spec.component or "other"].append(name)
            continue
        for block in spec.blocks:
            by_block[(spec.component, block)].append(name)
        if spec.class_:
            by_class[(spec.component, spec.class_)].append(name)
    for component in arch.components:
        print(f'Component "{component.name}":' + (f" {component.summary}" if component.summary else ""))
        print("  Blocks:")
        for block in component.blocks:
            _entry(block, by_block[(component.name, block)], verbose)
        print("  Classes:")
        for class_ in arch.classes[component.name]:
            _entry(class_, by_class[(component.name, class_)], verbose)
    if passthrough:
        print("Passed through unchanged:")
        for component, keys in passthrough.items():
            print(f"  {component}: {len(keys)} key{'' if len(keys) == 1 else 's'}")
            if verbose:
                for key in keys:
                    print(f"    - {key}")
    if arch.optional_components:
        print(f"Optional parts (files may leave them out): {', '.join(arch.optional_components)}")


def _entry(name: str, keys: list[str], verbose: bool) -> None:
    if verbose:
        print(f"    {name}:")
        for key in keys:
            print(f"    - {key}")
    else:
        print(f"  - {name}")


# inspect ---------------------------------------------------------------------------------------------
def run_inspect(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    path = Path(args.file)
    with open_tensor_file(path) as file:
        model_type, arch_name, note = detect_model(file, plugins)
        if arch_name == GENERIC:
            arch = generic_architecture([file.tensors])
        else:
            arch = plugins.architectures.get(arch_name).for_file(file) or plugins.architectures.get(arch_name)
        absent: list[str] = []
        if model_type.name == "base":
            match = match_by_keys(arch, file.tensors)
            unknown, missing = list(match.unknown), list(match.missing)
            absent = sorted(absent_components(arch, {arch.canonical(name) for name in file.tensors}))
        else:
            source = model_type.open(file, arch)
            targets = set(source.keys())
            details = source.describe() if hasattr(source, "describe") else {}  # optional: what the type says
            unknown, missing = [], []
        dtypes_count = collections.Counter(info.dtype for info in file.tensors.values())
        parameters = sum(info.numel for info in file.tensors.values())
        report: dict[str, Any] = {
            "file": str(path),
            "size_bytes": getattr(file, "file_size", None) or path.stat().st_size,
            "architecture": arch_name,
            "architecture_note": note,
            "model_type": model_type.name,
            "merge_space": model_type.space.value,
            "keys": len(file.tensors),
            "parameters": parameters,
            "dtypes": dict(sorted(dtypes_count.items())),
            "unknown_keys": unknown,
            "missing_keys": missing,
            "absent_parts": absent,
            "recipe": stored_recipe(file.metadata),
            "metadata_keys": sorted(file.metadata),
        }
        if model_type.name != "base":
            report["targets"] = len(targets)
            report["details"] = details
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"file:         {printable(report['file'])} ({report['size_bytes'] / 1e9:.2f} GB)")
    print(f"architecture: {arch_name}" + (f"  ({note})" if note else ""))
    print(f"model type:   {model_type.name} ({model_type.space.value} space)")
    print(f"keys:         {report['keys']} ({parameters / 1e6:.1f} M parameters)"
          + (f", targeting {report['targets']} {arch_name} keys" if "targets" in report else ""))
    for label, text in report.get("details", {}).items():
        print(f"{label + ':':<14}{printable(str(text))}")
    print("dtypes:       " + ", ".join(f"{k} x{v}" for k, v in report["dtypes"].items()))
    if absent:
        print("without:      " + ", ".join(absent) + " (optional parts of " + arch_name + ")")
    for label, keys in (("unknown keys", unknown), ("missing keys", missing)):
        if keys:
            shown = keys if args.verbose else keys[:5]
            print(f"{label}: {len(keys)}" + ("" if args.verbose or len(keys) <= 5 else " (first 5; -v lists all)"))
            for key in shown:
                print(f"  - {printable(key)}")
    if args.verbose and model_type.name == "base" and (arch_name == GENERIC or plugins.architectures.get(arch_name).is_family):
        print_architecture(arch, verbose=False)  # derived from this file: shown nowhere else
    if report["recipe"]:
        print("recipe:")
        for line in report["recipe"].rstrip("\n").split("\n"):
            print(f"  {printable(line)}")
    return 0


# plugins ---------------------------------------------------------------------------------------------
def run_plugins(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    conflict = None
    try:
        plugins.load_all_registries()
    except MechaError as error:
        conflict = str(error)
    rows = [record.as_dict() for record in plugins.records.values()]
    if args.json:
        print(json.dumps({"plugins": rows, "error": conflict}, indent=2))
        return 0
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        print(f"{row['name']} ({row['distribution'] or 'not installed'}{version}): {row['status']}")
        if row["hooks"]:
            print(f"  hooks: {', '.join(row['hooks'])}")
        for kind, names in row["provides"].items():
            print(f"  {kind.replace('_', ' ')}: {', '.join(names)}")
    if conflict:
        print(f"conflict: {conflict}")
    return 0


# methods ---------------------------------------------------------------------------------------------
def method_json(method: MergeMethod, provider: str) -> dict[str, Any]:
    return {
        "name": method.name,
        "signature": method.signature(),
        "summary": method.summary,
        "inputs": [{"name": i.name, "space": "same" if not hasattr(i.space, "value") else i.space.value,
                    "variadic": i.variadic} for i in method.inputs],
        "hyperparameters": [{"name": h.name, "type": h.type_name(), "default": h.default} for h in method.hypers],
        "returns": "same" if not hasattr(method.returns, "value") else method.returns.value,
        "elementwise": method.elementwise,
        "lazy_inputs": method.lazy_inputs,
        "plugin": provider,
        "doc": method.doc,
    }


def run_methods(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    registry = plugins.merge_methods
    if args.name:
        method = registry.get(args.name)
        data = method_json(method, plugins.provider("merge_methods", method.name).label)
        if args.json:
            print(json.dumps(data, indent=2, default=str))
            return 0
        print(data["signature"])
        print(f"  plugin:      {data['plugin']}")
        print(f"  elementwise: {'yes (large tensors are merged in chunks)' if method.elementwise else 'no'}")
        if method.lazy_inputs:
            print("  lazy inputs: yes (reads its models range by range, in passes)")
        print()
        print("\n".join(f"  {line}" if line else "" for line in method.doc.splitlines()))
        return 0
    if args.json:
        print(json.dumps([method_json(registry.get(n), plugins.provider("merge_methods", n).label) for n in registry],
                         indent=2, default=str))
        return 0
    width = max((len(n) for n in registry), default=0)
    for name in registry:
        print(f"{name.ljust(width)}  {registry.get(name).summary}")
    return 0
