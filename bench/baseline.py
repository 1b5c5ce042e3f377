"""The minimal merge loop mecha is measured against: one thread, no framework.

Per key: read each input through safetensors' memory maps, compute in fp32 (torch.lerp for two models,
a running sum for more), cast to fp16 (or, with ``--fp8``, clamp to fp8 e4m3fn's finite range and cast to
it) and append to the output file, whose header is written first.

    python bench/baseline.py [--fp8] OUTPUT INPUT [INPUT ...]
"""

from __future__ import annotations

import json
import sys
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: harmless

import torch  # noqa: E402
from safetensors import safe_open

from mecha_core.direct_writes import tensor_bytes


def main(output: str, inputs: list[str], fp8: bool = False) -> None:
    files = [safe_open(path, "pt") for path in inputs]
    first = files[0]
    keys = sorted(first.keys())
    header, offset = {}, 0
    shapes = {}
    for key in keys:
        shape = first.get_slice(key).get_shape()
        size = 1 if fp8 else 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F8_E4M3" if fp8 else "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        shapes[key] = shape
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    with open(output, "wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        for key in keys:
            if len(files) == 2:
                result = torch.lerp(files[0].get_tensor(key).float(), files[1].get_tensor(key).float(), 0.5)
            else:
                result = files[0].get_tensor(key).float()
                for f in files[1:]:
                    result += f.get_tensor(key).float()
                result /= len(files)
            if fp8:
                out.write(tensor_bytes(result.clamp_(-448, 448).to(torch.float8_e4m3fn).contiguous()))
            else:
                out.write(tensor_bytes(result.half().contiguous()))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    fp8 = arguments[:1] == ["--fp8"]
    main(arguments[fp8], arguments[fp8 + 1:], fp8)
