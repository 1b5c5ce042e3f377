"""A real ``mecha merge`` process, interrupted by Ctrl-C (SIGINT) or SIGTERM while it writes a 150 MB
output: it exits promptly, removes its temporary file and leaves the previous output and the inputs
as they were."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mecha_core.output_file import save_tensors

from .conftest import TEMP_GLOB

OLD = b"the previous output, which must survive the interrupt"
KEYS, ROWS, COLUMNS = 8, 2048, 2304  # 8 keys of 18.9 MB: 151 MB of fp32 per model


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """Two ~150 MB generic models (written once for the module) and the digests of their bytes."""
    folder = tmp_path_factory.mktemp("interrupt")
    for name, value in (("a", 1.0), ("b", 2.0)):
        save_tensors({f"model.layers.{i}.weight": torch.full((ROWS, COLUMNS), value + i) for i in range(KEYS)},
                     folder / f"{name}.safetensors")
    (folder / "r.mecha").write_text('model "a.safetensors"\nmodel "b.safetensors"\n'
                                    'merge "weighted_sum" &0 &1 alpha=0.5\n')
    yield folder, {name: _digest(folder / name) for name in ("a.safetensors", "b.safetensors")}
    for path in folder.iterdir():  # 300 MB: do not wait for pytest's rotation of old temporary folders
        path.unlink()


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGINT, 130, "mecha: interrupted; no output was written"),
    (signal.SIGTERM, 143, "mecha: terminated; no output was written"),
    (signal.SIGHUP, 129, "mecha: terminated by SIGHUP; no output was written"),
    (signal.SIGUSR1, 138, "mecha: terminated by SIGUSR1; no output was written"),
])
def test_an_interrupted_merge_leaves_nothing(big_models, signum, status, message):
    folder, digests = big_models
    out = folder / "out.safetensors"
    out.write_bytes(OLD)
    process = _start_merge(folder, out)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(TEMP_GLOB)):  # the output is being written once its temporary file exists
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the merge never started writing"
            time.sleep(0.001)
        time.sleep(0.02)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == status, err  # not 0: the signal landed before the merge could finish
    assert err.strip().splitlines()[-1] == message
    assert list(folder.glob(TEMP_GLOB)) == []
    assert out.read_bytes() == OLD
    assert {name: _digest(folder / name) for name in digests} == digests


def _start_merge(folder: Path, out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, MECHA_LOAD_PLUGINS="methods", MECHA_CONFIG=str(folder / "no-config.toml"))
    env.pop("MECHA_MODELS_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "mecha_core", "merge", "r.mecha", "-o", out.name,
                             "--save-dtype", "fp32", "--threads", "2", "--quiet"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_next_merge_removes_what_a_killed_one_left(big_models):
    """SIGKILL cannot be handled: the temporary file stays, until the next merge into the folder
    finds that its writer is gone."""
    folder, digests = big_models
    out = folder / "out.safetensors"
    out.write_bytes(OLD)
    process = _start_merge(folder, out)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(TEMP_GLOB)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the merge never started writing"
            time.sleep(0.001)
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    left = list(folder.glob(TEMP_GLOB))
    assert len(left) == 1 and out.read_bytes() == OLD
    process = _start_merge(folder, out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert list(folder.glob(TEMP_GLOB)) == [] and out.read_bytes() != OLD
    assert {name: _digest(folder / name) for name in digests} == digests
