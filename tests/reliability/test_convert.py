"""``mecha convert``: a pickle becomes safetensors through ``torch.load(weights_only=True)``, which
refuses to run code; mecha itself never unpickles a model file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import safetensors
import torch

from .conftest import error_line, run, snapshot

WARNING = ("mecha: warning: loading {source} with torch.load(weights_only=True): only tensors and plain data are "
           "accepted, no code runs; convert only files you trust anyway")


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_checkpoint_converts_with_a_warning(folder, capsys):
    weights = {"w": torch.arange(6.0).reshape(2, 3), "h": torch.ones(2, dtype=torch.float16)}
    torch.save({"state_dict": weights, "epoch": 3}, folder / "model.ckpt")
    status, out, err = run(capsys, "convert", "model.ckpt")
    assert status == 0
    assert err.strip() == WARNING.format(source="model.ckpt")
    assert out.strip() == "wrote model.safetensors: 2 tensors"
    with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"w", "h"}
        assert f.get_tensor("w").equal(weights["w"]) and f.get_tensor("h").dtype == torch.float16


def test_entries_safetensors_cannot_hold_are_left_out_and_counted(folder, capsys):
    torch.save({"w": torch.ones(2), "step": 7, "name": "x", "c": torch.ones(2, dtype=torch.complex64),
                "sparse": torch.eye(2).to_sparse()}, folder / "m.pt")
    status, out, err = run(capsys, "convert", "m.pt", "-o", "converted.safetensors")
    assert status == 0, err
    assert out.strip() == "wrote converted.safetensors: 1 tensors (4 other entries left out)"


class RunsCode:
    """A pickle whose loading would create a marker file (a harmless stand-in for malware)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_a_malicious_pickle_is_refused_without_running_code(folder, capsys, container):
    marker = folder / "code-ran"
    payload = {"w": torch.ones(2), "evil": RunsCode(marker)}
    if container == "torch.save":
        torch.save(payload, folder / "evil.pt")
    else:
        (folder / "evil.pt").write_bytes(pickle.dumps(payload, protocol=2))
    before = snapshot(folder)
    status, _, err = run(capsys, "convert", "evil.pt")
    assert status == 1 and not marker.exists()
    lines = err.strip().splitlines()
    assert lines[0] == WARNING.format(source="evil.pt")
    assert len(lines) == 2 and lines[1].startswith("mecha: error: evil.pt: cannot be loaded safely (it may hold code, "
                                                   "or not be a PyTorch file): UnpicklingError: ")
    assert snapshot(folder) == before


def test_the_payload_is_live(folder):
    """The control: unpickled without protection, the payload does run (so the refusal above means something)."""
    marker = folder / "code-ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))  # noqa: S301 - the point of the test
    assert marker.exists()


def test_not_a_dict(folder, capsys):
    torch.save([torch.ones(2)], folder / "list.pt")
    status, _, err = run(capsys, "convert", "list.pt")
    assert status == 1 and err.strip().splitlines()[-1] == "mecha: error: list.pt: holds a list, expected a dict of tensors"
    assert not (folder / "list.safetensors").exists()


def test_no_tensors(folder, capsys):
    torch.save({"epoch": 3}, folder / "empty.pt")
    status, _, err = run(capsys, "convert", "empty.pt")
    assert status == 1
    assert err.strip().splitlines()[-1] == ("mecha: error: empty.pt: holds no tensors that safetensors can store "
                                            "(expected a dict of dense tensors of a supported dtype)")


def test_garbage_and_missing_files(folder, capsys):
    (folder / "junk.ckpt").write_bytes(b"not a pickle at all")
    status, _, err = run(capsys, "convert", "junk.ckpt")
    assert status == 1 and err.strip().splitlines()[-1].startswith("mecha: error: junk.ckpt: cannot be loaded safely")
    status, _, err = run(capsys, "convert", "missing.ckpt")
    assert status == 1 and error_line(err) == "mecha: error: missing.ckpt: no such file"
    status, _, err = run(capsys, "convert", "model.safetensors")
    assert status == 1 and error_line(err) == ("mecha: error: model.safetensors: expected a pickle (.ckpt, .pt, .pth, "
                                               ".bin, .pkl)")


def test_the_output_cannot_be_the_input(folder, capsys):
    torch.save({"w": torch.ones(2)}, folder / "m.pt")
    before = snapshot(folder)
    status, _, err = run(capsys, "convert", "m.pt", "-o", "m.pt")
    assert status == 1
    assert err.strip().splitlines()[-1] == ("mecha: error: refusing to write the output over the input 'm.pt'; "
                                            "choose another output name")
    assert snapshot(folder) == before
