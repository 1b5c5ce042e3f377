"""The picture: one series per model and component, the block shares handed to matplotlib, and a
valid PNG of the requested size."""

from __future__ import annotations

import struct
import zlib

import pytest

import mecha_core as mc

from .conftest import tiny_headers

matplotlib = pytest.importorskip("matplotlib")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def plotted(monkeypatch):
    """The (axes title, label, x, y) of every line matplotlib is asked to draw."""
    from matplotlib.axes import Axes
    lines = []
    original = Axes.plot

    def plot(self, x, y, *args, **kwargs):
        lines.append((self.get_title(), kwargs.get("label"), list(x), list(y)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    return lines


def test_plot_series_and_png_size(plugins, mecha_cli, tmp_path, plotted):
    a, b, c = tiny_headers(tmp_path, "sd1")
    unet = [0.1 * i for i in range(25)]
    recipe = mc.weighted_sum(mc.weighted_sum(a, b, alpha=mc.blocks("sd1", "unet", *unet) | mc.default("sd1", "txt", 0.5)),
                             c, alpha=0.2)
    (tmp_path / "r.mecha").write_text(mc.serialize(recipe))
    result = mecha_cli("explain", tmp_path / "r.mecha", "--plot", tmp_path / "shares.png", "--plot-size", "900x700")
    assert result.status == 0, result.err
    assert png_size((tmp_path / "shares.png").read_bytes()) == (900, 700)
    by_panel = {}
    for title, label, x, y in plotted:
        by_panel.setdefault(title.split(":")[0], {})[label.split()[0]] = (x, y)
    assert set(by_panel) == {"sd1 txt", "sd1 unet"}
    assert set(by_panel["sd1 unet"]) == set(by_panel["sd1 txt"]) == {"A", "B", "C"}
    x, y = by_panel["sd1 unet"]["A"]
    assert x == list(range(25))
    assert y == pytest.approx([0.8 * (1 - v) for v in unet])
    assert by_panel["sd1 unet"]["B"][1] == pytest.approx([0.8 * v for v in unet])
    assert by_panel["sd1 unet"]["C"][1] == pytest.approx([0.2] * 25)
    assert by_panel["sd1 txt"]["A"][1] == pytest.approx([0.4] * 12)


def test_svg_and_bad_suffix(plugins, mecha_cli, tmp_path):
    a, b = tiny_headers(tmp_path, "sd1", "ab")
    (tmp_path / "r.mecha").write_text(mc.serialize(mc.weighted_sum(a, b)))
    result = mecha_cli("explain", tmp_path / "r.mecha", "--plot", tmp_path / "shares.svg")
    assert result.status == 0, result.err
    assert "<svg" in (tmp_path / "shares.svg").read_text()
    result = mecha_cli("explain", tmp_path / "r.mecha", "--plot", tmp_path / "shares.jpg")
    assert result.status == 1 and ".png or .svg" in result.err
    assert mecha_cli("explain", tmp_path / "r.mecha", "--plot", tmp_path / "s.png", "--plot-size", "big").status == 2
