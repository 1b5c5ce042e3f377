"""``mecha make_toy_mlp OUTPUT``: write a random toy_mlp checkpoint to try merges with."""

from __future__ import annotations

import argparse

from mecha_core import CliCommand, MechaError, save_tensors

from .architecture import generate

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0); one seed, one model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the tensors (default: fp32)")
    parser.add_argument("--full", action="store_true", help="full-size dimensions instead of tiny ones")


def run(args: argparse.Namespace) -> int:
    import torch

    if not args.output.endswith(".safetensors"):
        raise MechaError(f"{args.output}: the output must end in .safetensors")
    tensors = generate(seed=args.seed, dtype=getattr(torch, DTYPES[args.dtype]), tiny=not args.full)
    path = save_tensors(tensors, args.output)  # written to a temporary file, then renamed into place
    print(f"wrote {path}: toy_mlp, {len(tensors)} keys, seed {args.seed}")
    return 0


MAKE_TOY_MLP = CliCommand(
    name="make_toy_mlp",
    summary="write a random toy_mlp checkpoint (mecha-myplugin)",
    run=run,
    add_arguments=add_arguments,
)
