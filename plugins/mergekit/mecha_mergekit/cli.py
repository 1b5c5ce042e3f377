"""``mecha mergekit CONFIG``: the .mecha recipe of a mergekit configuration, and the options it sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mecha_core import MechaError, serialize

from .convert import read_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the mergekit YAML configuration")
    parser.add_argument("-o", "--output", help="write the recipe here instead of standard output")


def run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if not path.is_file():
        raise MechaError(f"{args.config}: no such configuration file")
    read = read_config(path)
    text = serialize(read.recipe)
    flags = "".join(f" --{name.replace('_', '-')} {value}" for name, value in read.options.items())
    header = f"# from {path.name}; run with: mecha merge RECIPE -o OUTPUT{flags}\n"
    text = text.replace("\n", "\n" + header, 1)
    if args.output:
        target = Path(args.output)
        if target.resolve() == path.resolve():
            raise MechaError(f"{args.output}: is the configuration itself; choose another output")
        temporary = target.with_name(f".{target.name}.mecha-tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    else:
        sys.stdout.write(text)
    return 0
