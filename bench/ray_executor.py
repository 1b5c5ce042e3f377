"""The ray executor against the local one, same recipes, same invocation (mecha-ray installed).

    python bench/ray_executor.py                  # generates ~8.7 GB under bench/data once
    python bench/ray_executor.py --repeat 3
    python bench/ray_executor.py --smoke          # tiny models in a temporary folder: checks it runs

Starts a Ray cluster of this machine (``ray start --head --block --num-cpus 2``: one node of 2 CPUs, a
process of this script's own, stopped at the end without touching other clusters) before any timed
run, as a user of a cluster has it running, and runs each merge with ``--executor local``, with
``--ray-address`` of that cluster, and with ``--ray-address local`` (the merge starts a cluster of
its own and stops it: what a merge pays without a running cluster), in turns; checks that all three
wrote the same bytes. Scenarios:

- SD1 ``n_average`` of 8 inputs into one file (real-size pruned SD1.5 fp16; the 8 inputs are hard
  links to 2 generated files, to spare disk space; the page cache holds them either way);
- an LLM ``ties_merge`` of 2 models of TinyLlama's shapes (bench/llm.py: 1.1 G parameters, fp16,
  base and one model, density 0.5) into a model folder of 600 MB shards (4 shards).

The figures are the ratios of wall times to the local executor's (fastest of ``--repeat`` runs each).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import ensure_sd1  # noqa: E402
from llm import ensure_llamas  # noqa: E402
from run import hard_links, model_lines, recipe_file  # noqa: E402


def tiny_llamas(data: Path, hidden: int = 64, layers: int = 2, mlp: int = 128, vocab: int = 256) -> list[Path]:
    """Two tiny Llama-layout folders (one model.safetensors each, and config.json), for --smoke."""
    import torch

    import mecha_core as mc
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{i}.self_attn.{name}.weight"] = (hidden, hidden)
        shapes[f"model.layers.{i}.mlp.gate_proj.weight"] = (mlp, hidden)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (mlp, hidden)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, mlp)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (hidden,)
        shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (hidden,)
    folders = []
    for seed in range(2):
        folder = data / f"llm-{seed}"
        if not (folder / "model.safetensors").exists():
            print(f"generating {folder}", file=sys.stderr)
            folder.mkdir(parents=True, exist_ok=True)
            generator = torch.Generator().manual_seed(seed)
            tensors = {name: (torch.randn(shape, generator=generator) * 0.02).half() for name, shape in shapes.items()}
            mc.save_tensors(tensors, folder / "model.safetensors", {"format": "pt"})
            (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers,
                                                            "hidden_size": hidden, "torch_dtype": "float16"}))
        folders.append(folder)
    return folders


def tiny_sd1(data: Path) -> list[Path]:
    """Two tiny SD1 checkpoints (real key names, shrunk dimensions), for --smoke."""
    from mecha_core.testing import tiny_model, write_model
    return [write_model(tiny_model("sd1", seed=seed), data / f"sd1-{seed}.safetensors") for seed in range(2)]


def digest(output: Path) -> str:
    """SHA-256 over every file of the output (a file, or a folder's files in name order)."""
    files = sorted(output.rglob("*")) if output.is_dir() else [output]
    total = hashlib.sha256()
    for file in (f for f in files if f.is_file()):
        total.update(file.name.encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 24):
                total.update(block)
    return total.hexdigest()


def timed(command: list[str], inputs: list[Path], output: Path) -> tuple[float, str]:
    """The wall time of `command`, and the digest of what it wrote (checked outside the timing)."""
    for path in inputs:  # warm the page cache
        for file in ([path] if path.is_file() else sorted(path.glob("*.safetensors"))):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    written = digest(output)
    shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.sync()
    return wall, written


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_cluster(port: int, temp_dir: str) -> subprocess.Popen[bytes]:
    """A head node of 2 CPUs, as a child process (``--block``); returns once it accepts connections.
    Its files go to `temp_dir`, so that it leaves no "current cluster" in /tmp/ray for later
    ``ray.init()`` calls on this machine to find."""
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--object-store-memory=1000000000",
                             f"--temp-dir={temp_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise SystemExit(f"ray start exited with status {head.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(3)  # the GCS answers before the raylet has registered
            return head
        except OSError:
            time.sleep(0.5)
    head.terminate()
    raise SystemExit("the Ray head did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny models in a temporary folder, one run each")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster of this machine: no token to pass around
    if args.smoke:
        with tempfile.TemporaryDirectory() as scratch:
            bench(Path(scratch), 1, smoke=True)
        return
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    bench(data, args.repeat, smoke=False)


def bench(data: Path, repeat: int, *, smoke: bool) -> None:
    two = tiny_sd1(data) if smoke else ensure_sd1(data, 2)
    eight = hard_links(data, "ray-link", two, 8)
    sd1 = recipe_file(data, "ray-eight", model_lines(eight) + ['merge "n_average" ' + " ".join(f"&{i}" for i in range(8))])
    llm = tiny_llamas(data) if smoke else ensure_llamas(data)
    ties = recipe_file(data, "ray-ties", model_lines(llm) + ['merge "ties_merge" &0 &1 density=0.5'])
    shard = "40KB" if smoke else "600MB"
    scenarios = [("SD1 n_average, 8 inputs, one file", sd1, eight, data / "ray-out.safetensors", []),
                 ("LLM ties_merge, 2 TinyLlama-shaped models, folder", ties, llm, data / "ray-out",
                  ["--max-shard-size", shard])]
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")  # short: Ray's socket paths must fit
    started = time.perf_counter()
    head = start_cluster(port, temp_dir)
    print(f"ray start --head: accepting tasks after {time.perf_counter() - started:.1f} s", file=sys.stderr)
    runs = {"local": ["--executor", "local"], "ray": ["--ray-address", f"127.0.0.1:{port}"],
            "ray, own cluster": ["--ray-address", "local"]}
    rows = []
    try:
        for name, recipe, inputs, output, extra in scenarios:
            base = [sys.executable, "-m", "mecha_core", "merge", str(recipe), "-o", str(output) + ("/" if extra else ""),
                    "--quiet", *extra]
            walls: dict[str, list[float]] = {run: [] for run in runs}
            for _ in range(repeat):
                digests = {}
                for run, options in runs.items():
                    wall, digests[run] = timed(base + options, inputs, output)
                    walls[run].append(wall)
                if len(set(digests.values())) != 1:
                    raise SystemExit(f"{name}: the ray executor wrote other bytes than the local one")
                print(f"{name}: " + ", ".join(f"{run} {walls[run][-1]:.1f} s" for run in runs) + " (same bytes)",
                      file=sys.stderr)
            best = {run: min(times) for run, times in walls.items()}
            rows.append(f"| {name} | {best['local']:.1f} s | {best['ray']:.1f} s | {best['ray'] / best['local']:.2f}x "
                        f"| {best['ray, own cluster']:.1f} s | {best['ray, own cluster'] / best['local']:.2f}x |")
    finally:
        head.terminate()  # its SIGTERM handler stops the cluster's processes
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    print("| merge | local | ray (running 2-CPU cluster) | ray / local | ray, own cluster (started by the merge) "
          "| own / local |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
