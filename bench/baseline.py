"""The minimal merge loop mecha is measured against: one thread, no framework.

Per key: read each input through safetensors' memory maps, compute in fp32 (torch.lerp for two models,
a running sum for more), cast to fp16 and append to the output file, whose header is written first.

    python bench/baseline.py OUTPUT INPUT [INPUT ...]
"""

from __future__ import annotations

import json
import sys
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: harmless

import torch  # noqa: E402
from safetensors import safe_open

from mecha_core.direct_writes import tensor_bytes


def main(output: str, inputs: list[str]) -> None:
    files = [safe_open(path, "pt") for path in inputs]
    first = files[0]
    keys = sorted(first.keys())
    header, offset = {}, 0
    shapes = {}
    for key in keys:
        shape = first.get_slice(key).get_shape()
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
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
            out.write(tensor_bytes(result.half().contiguous()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
