"""``mecha explain``: what a merge will do, from the headers alone (also ``mecha merge --dry-run``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import MechaError
from ..plugins import Plugins
from ..recipe import ModelNode, RecipeNode
from .arguments import megabytes, read_recipe_file, recipe_path


def register(commands: Any, common: argparse.ArgumentParser, plugins: Plugins) -> None:
    parser = commands.add_parser(
        "explain", parents=[common], help="what a recipe will do, before merging it",
        description="Read the models' headers only (never their tensors) and show the recipe as it resolves, "
                    "the plan (keys merged, copied, dropped; bytes read and written; peak memory), each "
                    "model's share per component and block, and the warnings the merge would print.")
    parser.add_argument("recipe", help="the .mecha recipe file ('-' reads standard input), or a file of a plugin's "
                                       "recipe format (a mergekit configuration)")
    parser.add_argument("--models-dir", action="append", metavar="DIR",
                        help="folder where model names are looked up (repeatable)")
    parser.add_argument("--threads", type=int, metavar="N", help="worker threads the merge would use")
    parser.add_argument("--fallback", metavar="MODEL", help="model that would provide the keys the recipe does not merge")
    parser.add_argument("--drop", action="append", default=[], metavar="WHAT",
                        help="leave out a component or keys matching a pattern (repeatable)")
    parser.add_argument("--memory-budget", type=megabytes, metavar="MB",
                        help="memory one worker may hold for a chunk of an elementwise merge (default: 32)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", metavar="FILE", help="draw each model's share per block into FILE (.png or .svg; "
                                                       "needs the extra mecha-core[plot])")
    parser.add_argument("--plot-size", type=_size, metavar="WxH", help="the picture's size in pixels (e.g. 1200x800)")
    parser.add_argument("--graph", metavar="FILE", help="write the recipe tree in Graphviz DOT into FILE")
    parser.set_defaults(handler=run_explain)


def _size(text: str) -> tuple[int, int]:
    from ..explain_plot import parse_size
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_explain(args: argparse.Namespace) -> int:
    # a .mecha file stays a path, so that neither the picture nor the graph may replace it; a file of a
    # plugin's recipe format (a mergekit configuration) is read with the merge options it sets
    recipe, file_options = read_recipe_file(args.recipe)
    given = {"drop": args.drop or None, "fallback_model": ModelNode(args.fallback) if args.fallback else None}
    options = {**file_options, **{k: v for k, v in given.items() if v is not None}}
    inputs = [] if args.recipe == "-" or isinstance(recipe, Path) else [recipe_path(args.recipe)]
    return show(recipe, as_json=args.json, plot=args.plot, plot_size=args.plot_size, graph=args.graph,
                inputs=inputs, models_dir=args.models_dir, threads=args.threads,
                memory_budget=int(args.memory_budget * 2**20) if args.memory_budget else None, **options)


def show(recipe: RecipeNode | Path, *, as_json: bool = False, plot: str | None = None,
         plot_size: tuple[int, int] | None = None, graph: str | None = None, inputs: list[Path] | None = None,
         **options: Any) -> int:
    """Explain `recipe` (a recipe, or a recipe file) with merge `options`, print it, and write the
    picture and graph asked for, over none of `inputs` (the recipe's file)."""
    from ..explain import explain
    from ..explain_render import render_dot, render_json, render_text
    from ..output_file import write_text_atomically
    if plot is not None:
        _check_plot_target(plot)
    explanation = explain(recipe, **options)
    inputs = list(inputs or []) + ([recipe] if isinstance(recipe, Path) else [])
    if plot is not None:
        from ..explain_plot import plot_shares
        plot_shares(explanation, plot, plot_size, inputs=inputs)
    if graph is not None:
        write_text_atomically(Path(graph), render_dot(explanation), inputs=[*inputs, *(m.file for m in explanation.models)])
    sys.stdout.write(render_json(explanation) if as_json else render_text(explanation))
    return 0


def _check_plot_target(plot: str) -> None:
    """Before any header is read: a plot that cannot be drawn is said at once."""
    from ..explain_plot import FORMATS
    if Path(plot).suffix.lower() not in FORMATS:
        raise MechaError(f"{plot}: the plot is written as .png or .svg")
    try:
        import matplotlib  # noqa: F401 - whether it is installed
    except ImportError:
        raise MechaError("--plot needs matplotlib: pip install 'mecha-core[plot]'") from None
