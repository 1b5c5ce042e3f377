"""sd-mecha 0.0.25's command-line spellings: its flags work as aliases and show in --help; compose the
0.0.x way writes where 0.0.x wrote; a bad flag shows the subcommand's usage; info matches any case."""

from __future__ import annotations

import argparse

import pytest

import mecha_core as mc
from mecha_core.cli import build_parser

from .conftest import load

OLD_AND_NEW = [
    (["--models-directory", "m"], ["--models-dir", "m"]),
    (["-j", "3"], ["--threads", "3"]),
    (["-d", "cpu"], ["--device", "cpu"]),
    (["-p", "fp64"], ["--work-dtype", "fp64"]),
    (["--dtype", "fp64"], ["--work-dtype", "fp64"]),
    (["-t", "fp32"], ["--save-dtype", "fp32"]),
]


def parsed(plugins, *argv: str) -> argparse.Namespace:
    namespace = vars(build_parser(plugins).parse_args(list(argv)))
    namespace.pop("command_parser")
    return namespace


@pytest.mark.parametrize("old, new", OLD_AND_NEW, ids=[" ".join(o) for o, _ in OLD_AND_NEW])
def test_merge_flags_of_0_0_25_are_aliases(plugins, old, new):
    assert parsed(plugins, "merge", "r.mecha", *old) == parsed(plugins, "merge", "r.mecha", *new)


def test_old_spellings_show_in_help(plugins, mecha_cli):
    merge_help = mecha_cli("merge", "--help").out
    for spelling in ("--models-directory", "-j N", "-d DEVICE", "-p DTYPE, --dtype DTYPE", "-t DTYPE"):
        assert spelling in merge_help
    compose_help = mecha_cli("compose", "--help").out
    assert "--argument NAME VALUE" in compose_help and "--models-directory" in compose_help


def test_a_bad_flag_shows_the_subcommands_usage(plugins, mecha_cli):
    result = mecha_cli("merge", "r.mecha", "--no-such-flag")
    assert result.status == 2
    assert result.err.startswith("usage: mecha merge") and "unrecognized arguments: --no-such-flag" in result.err


def test_compose_the_0_0_x_way_writes_merge_mecha(plugins, mecha_cli, tmp_path, monkeypatch):
    template = tmp_path / "template.mecha"
    template.write_text('parameter "a" "BASE"\nparameter "b" "BASE"\nmerge "weighted_sum" &0 &1 alpha=0.5')
    monkeypatch.chdir(tmp_path)
    result = mecha_cli("compose", template, "--models-directory", "/models", "--argument", "a", "x",
                       "--argument", "b", "y")
    assert result.status == 0, result.err
    assert "--models-dir /models to `mecha merge`" in result.err and "goes to merge.mecha" in result.err
    assert mc.deserialize(tmp_path / "merge.mecha") == mc.weighted_sum("x", "y", alpha=0.5)
    printed = mecha_cli("compose", template, "-p", "a", "x", "-p", "b", "y")
    assert printed.out.startswith("version 1") and printed.err == ""
    chosen = mecha_cli("compose", template, "--argument", "a", "x", "-p", "b", "y", "-o", tmp_path / "mine.mecha")
    assert chosen.status == 0 and (tmp_path / "mine.mecha").is_file()


def test_info_finds_an_architecture_in_any_case(plugins, mecha_cli):
    assert mecha_cli("info", "SD1").out == mecha_cli("info", "sd1").out != ""


def test_a_merge_with_0_0_25_flags(models, mecha_cli, tmp_path):
    recipe = tmp_path / "ws.mecha"
    recipe.write_text('model "ghost" "sd1" "base"\nmodel "dream" "sd1" "base"\nmerge "weighted_sum" &0 &1 alpha=0.5')
    out = tmp_path / "out.safetensors"
    result = mecha_cli("merge", recipe, "--models-directory", models / "Stable-diffusion", "-j", "2", "-d", "cpu",
                       "-p", "fp64", "-t", "fp32", "-o", out, "--quiet")
    assert result.status == 0, result.err
    merged = load(out)
    assert all(v.dtype.is_floating_point is False or v.dtype.itemsize == 4 for k, v in merged.items()
               if k.startswith("model.diffusion_model"))
