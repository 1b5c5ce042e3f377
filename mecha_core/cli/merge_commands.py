"""``mecha merge`` and ``mecha compose``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import dtypes
from ..config import load_config, models_dirs
from ..errors import MechaError, PluginError
from ..merge import NONFINITE_MODES, merge_with_report
from ..output_file import write_text_atomically
from ..planning import KeyPlan, MergePlan
from ..plugins import Plugins, get_plugins
from ..recipe import ModelNode, RecipeNode, compose, resolve_model_path
from ..recipe_format import deserialize, serialize
from .allocator import keep_freed_memory
from .arguments import megabytes, read_recipe, read_recipe_file


def register(commands: Any, common: argparse.ArgumentParser, plugins: Plugins) -> None:
    merge = commands.add_parser("merge", parents=[common], help="run a .mecha recipe into a safetensors file",
                                description="Run a .mecha recipe, key by key, into a safetensors file.")
    merge.add_argument("recipe", help="the .mecha recipe file ('-' reads standard input), or a file of a recipe "
                                      "format a plugin reads (mecha plugins lists them)")
    merge.add_argument("-o", "--output", help="output file, or model folder when it ends with / (default: the "
                                              "recipe's name with .safetensors, in the current folder)")
    merge.add_argument("--models-dir", "--models-directory", action="append", metavar="DIR",
                       help="folder where model names are looked up (repeatable; default: MECHA_MODELS_DIR, "
                            "then models_dirs in the config; --models-directory is sd-mecha 0.0.x's spelling)")
    merge.add_argument("-j", "--threads", type=int, metavar="N",
                       help="worker threads (default: one per core, at most 8)")
    merge.add_argument("-d", "--device", help="device computing the merge: cpu, cuda, cuda:1 ... (default: cpu)")
    merge.add_argument("--work-dtype", "-p", "--dtype", metavar="DTYPE",
                       help="dtype of the computation: fp32 (default), fp64, bf16, fp16 (-p/--dtype: sd-mecha "
                            "0.0.x's spelling)")
    merge.add_argument("-t", "--save-dtype", metavar="DTYPE",
                       help="dtype of merged keys in the output: fp16 (default), fp32, bf16, fp64, fp8 "
                            "(= fp8_e4m3fn), fp8_e5m2. Keys the recipe does not merge (copied from a model or "
                            "--fallback: the VAE, say) keep their file's dtype unless --save-dtype-all")
    merge.add_argument("--save-dtype-all", action="store_true",
                       help="convert copied keys (a VAE, passed-through parts) to --save-dtype too; by default "
                            "they keep their stored dtype")
    merge.add_argument("--layout", metavar="MODEL", help="the recipe's model whose packaging the output keeps "
                                                         "(parts such as FLUX.1's text encoders, key spellings; "
                                                         "default: the first model)")
    merge.add_argument("--fallback", metavar="MODEL", help="model that provides the keys the recipe does not merge "
                                                           "(e.g. the VAE)")
    merge.add_argument("--drop", action="append", default=[], metavar="WHAT",
                       help="leave out a component (e.g. ema) or keys matching a pattern (repeatable)")
    merge.add_argument("--nonfinite", choices=NONFINITE_MODES, default="warn",
                       help="what a NaN/inf in a result does (default: warn)")
    merge.add_argument("--memory-budget", type=megabytes, metavar="MB",
                       help="memory one worker may hold for a chunk of an elementwise merge (default: 32)")
    merge.add_argument("--max-shard-size", metavar="SIZE", help="largest shard of a model folder output: 5GB "
                                                                "(default), 500MB, 2GiB...; implies a folder output")
    merge.add_argument("--executor", metavar="NAME", help="what runs the merge: local (default: threads in this "
                                                          "process), ray (mecha-ray: a Ray cluster)...")
    merge.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to run on (auto, or the head's "
                                                                "host:port); implies --executor ray")
    merge.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    merge.add_argument("--store-model-paths", action="store_true",
                       help="store the models' paths as the recipe gives them in the output's recipe (default: "
                            "their file names only, so the output does not show your folders)")
    merge.add_argument("--no-strict", dest="strict", action="store_false",
                       help="merge a model given an architecture its keys do not fit (arch= in the recipe) "
                            "with the keys that fit, instead of stopping")
    merge.add_argument("--dry-run", action="store_true",
                       help="write nothing: show what the merge would do, as `mecha explain` does")
    save_types = []
    try:
        for model_type in plugins.model_types.values():
            if model_type.encoder is not None and model_type.save_option:
                save_types.append(model_type.name)
                merge.add_argument(f"--as-{model_type.name}", metavar=model_type.save_option.upper(),
                                   dest=f"as_{model_type.name}",
                                   help=f"save the result as a {model_type.name} model with this "
                                        f"{model_type.save_option}")
                for extra, text in model_type.save_extras:
                    merge.add_argument(f"--{model_type.name}-{extra}", dest=f"{model_type.name}_{extra}",
                                       metavar=extra.upper(), help=f"with --as-{model_type.name}: {text}")
    except PluginError as error:  # conflicting model types: the other commands must keep working
        plugins.report(f"no --as-TYPE options: {error}")
    merge.set_defaults(handler=run_merge, save_types=save_types, output_is_file=True)

    comp = commands.add_parser("compose", parents=[common], help="fill a recipe template's parameters",
                               description="Fill the parameters of a recipe template with models or recipes "
                                           "and print (or write) the composed recipe.")
    comp.add_argument("base", help="the template .mecha recipe")
    comp.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="fill parameter NAME with VALUE: a model file or name, or a .mecha recipe")
    comp.add_argument("--argument", nargs=2, action=_ZeroZeroArgument, dest="parameter", metavar=("NAME", "VALUE"),
                      help="sd-mecha 0.0.x's spelling of --parameter; as in 0.0.x, the recipe then goes to "
                           "merge.mecha unless -o says otherwise")
    comp.add_argument("--models-dir", "--models-directory", metavar="DIR", action=_ModelsDirOfCompose,
                      help="accepted for sd-mecha 0.0.x scripts: model names stay names in the composed recipe "
                           "and are looked up when it is merged (mecha merge --models-dir)")
    comp.add_argument("-o", "--output", help="write the recipe here instead of standard output")
    comp.set_defaults(handler=run_compose, output_is_file=False)


class _ZeroZeroArgument(argparse.Action):
    """``compose --argument NAME VALUE``: sd-mecha 0.0.x's ``-p``. Fills a parameter like ``--parameter``
    and, as 0.0.x wrote its result to ``merge.mecha``, makes that the output unless ``-o`` is given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        getattr(namespace, self.dest).append(list(values))
        if namespace.output is None:
            namespace.output = ZERO_ZERO_COMPOSE_OUTPUT
            print(f"mecha: note: {option_string} is sd-mecha 0.0.x's spelling of -p/--parameter; the recipe goes "
                  f"to {ZERO_ZERO_COMPOSE_OUTPUT} as in 0.0.x (-o chooses the file; without either, mecha "
                  f"compose prints it)", file=sys.stderr)


class _ModelsDirOfCompose(argparse.Action):
    """``compose --models-directory DIR``: nothing to do at compose time; it says where the folder goes."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"mecha: note: model names stay names in the composed recipe; pass --models-dir {values} to "
              f"`mecha merge` (or set MECHA_MODELS_DIR) to look them up there", file=sys.stderr)


ZERO_ZERO_COMPOSE_OUTPUT = "merge.mecha"


def _default_output(recipe: str) -> Path:
    if recipe == "-":
        return Path("merge.safetensors")
    return Path(Path(recipe).stem + ".safetensors")


def run_merge(args: argparse.Namespace) -> int:
    recipe, file_options = read_recipe_file(args.recipe)
    save_as = None
    save_options: dict[str, Any] = {}
    for name in args.save_types:
        model_type = get_plugins().model_types.get(name)
        extras = {extra: getattr(args, f"{name}_{extra}") for extra, _ in model_type.save_extras
                  if getattr(args, f"{name}_{extra}", None) is not None}
        value = getattr(args, f"as_{name}", None)
        if value is None:
            if extras:  # a usage error: exit 2, as argparse's
                print(f"mecha: error: --{name}-{next(iter(extras))} needs --as-{name}", file=sys.stderr)
                return 2
            continue
        problem = model_type.save_extras_usage(extras) if model_type.save_extras_usage else None
        if problem:
            print(f"mecha: error: {problem}", file=sys.stderr)
            return 2
        if save_as is not None:
            raise MechaError(f"choose one of --as-{save_as} and --as-{name}")
        save_as = name
        save_options = {model_type.save_option: value, **extras}
    if args.ray_address and args.executor not in (None, "ray"):  # a usage error: exit 2, as argparse's
        print(f"mecha: error: --ray-address runs on ray; it cannot go with --executor {args.executor}", file=sys.stderr)
        return 2
    output = args.output if args.output else _default_output(args.recipe)
    given = {  # the command line wins over the options the recipe file sets
        "work_dtype": args.work_dtype and dtypes.parse(args.work_dtype, dtypes.WORK_DTYPES, "work dtype"),
        "save_dtype": args.save_dtype and dtypes.parse(args.save_dtype, dtypes.SAVE_DTYPES, "save dtype"),
        "fallback_model": ModelNode(args.fallback) if args.fallback else None,
        "drop": args.drop or None,
    }
    options = dict(
        models_dir=args.models_dir, threads=args.threads, device=args.device,
        **{**file_options, **{k: v for k, v in given.items() if v is not None}},
        nonfinite=args.nonfinite, save_as=save_as, save_options=save_options, layout=args.layout,
        save_dtype_all=args.save_dtype_all, memory_budget=int(args.memory_budget * 2**20) if args.memory_budget else None,
        store_model_paths=args.store_model_paths, strict=args.strict)
    if args.dry_run:
        from .explain_command import show
        return show(recipe, **options)
    progress = _Progress(quiet=args.quiet)
    started = time.perf_counter()
    keep_freed_memory()
    _, report = merge_with_report(recipe, output, **options, progress=progress.update, on_plan=progress.start,
                                   max_shard_size=args.max_shard_size,
                                   executor=args.executor or ("ray" if args.ray_address else None),
                                   executor_options={"address": args.ray_address} if args.ray_address else None)
    progress.close()
    elapsed = time.perf_counter() - started
    for note in report.notes:
        print(f"mecha: note: {note}", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {output} ({report.keys_merged} keys merged, {report.keys_copied} copied, "
              f"{report.bytes_written / 1e9:.2f} GB) in {elapsed:.1f} s")
    return 0


class _Progress:
    """A tqdm bar over bytes written, with keys done, started once the plan is known."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.keys = 0
        self.total_keys = 0

    def start(self, plan: MergePlan) -> None:
        self.total_keys = len(plan.keys)
        if self.quiet:
            return
        from tqdm import tqdm
        total = sum(k.numel * dtypes.itemsize(dtypes.code_of(k.out_dtype)) for k in plan.keys)
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="merging",
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, plan: KeyPlan, written: int) -> None:
        self.keys += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.keys}/{self.total_keys} keys", refresh=False)
            self.bar.update(plan.numel * dtypes.itemsize(dtypes.code_of(plan.out_dtype)))

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()


def run_compose(args: argparse.Namespace) -> int:
    base = read_recipe(args.base)
    inputs: list[str] = [] if args.base == "-" else [args.base]
    values: dict[str, Any] = {}
    for name, value in args.parameter:
        if name in values:
            raise MechaError(f"parameter {name!r} is given twice")
        if value.endswith(".mecha"):
            values[name] = read_recipe(value)
        else:
            values[name] = value
        inputs.append(value)
    composed = compose(base, **values)
    text = serialize(composed)
    if args.output:
        # every file the recipe names counts as an input too (models, LoRAs), as given or under a models folder
        inputs += [str(node.source) for node in composed.models() if isinstance(node.source, str)]
        inputs += _models_found(composed)
        write_text_atomically(Path(args.output), text, inputs=inputs)
    else:
        sys.stdout.write(text)
    return 0


def _models_found(recipe: RecipeNode) -> list[str]:
    """The files the recipe's model names resolve to under the configured models folders, where they exist."""
    try:
        folders = models_dirs(None, load_config())
    except MechaError:  # a broken config is reported by the commands that need it
        return []
    found = []
    for node in recipe.models():
        if isinstance(node.source, str):
            try:
                found.append(str(resolve_model_path(node.source, folders)))
            except MechaError:
                continue
    return found
