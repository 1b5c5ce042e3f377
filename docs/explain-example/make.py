"""Regenerate docs/explain-example.png and the README's example output: three real-size SD1 files
holding only a header (their data section is a sparse hole: explain never reads it), explained."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def header_only_sd1(path: Path) -> None:
    from mecha_sd1.sd1 import keys
    header, offset = {}, 0
    for spec in keys():
        if spec.optional:
            continue
        size = 2 * eval("*".join(map(str, spec.shape)) or "1")
        header[spec.name] = {"dtype": "F16", "shape": list(spec.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + offset)


def main() -> None:
    with tempfile.TemporaryDirectory() as models:
        for name in ("base", "anime", "style"):
            header_only_sd1(Path(models) / f"{name}.safetensors")
        command = [sys.executable, "-m", "mecha_core", "explain", str(HERE / "recipe.mecha"), "--models-dir", models,
                   "--threads", "4", "--plot", str(HERE.parent / "explain-example.png"), "--plot-size", "1000x640"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(output.replace(models + "/", ""))


if __name__ == "__main__":
    main()
