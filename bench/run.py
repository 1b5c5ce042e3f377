"""Speed and memory of mecha against a minimal merge loop, measured in the same invocation.

    python bench/run.py                       # every scenario (generates ~20 GB of checkpoints once)
    python bench/run.py --only 2 8            # some scenarios
    python bench/run.py --data /big/disk      # where the checkpoints live (default: bench/data)

Scenarios, on real-size synthetic SD1.5 fp16 checkpoints (1131 keys, 1.07 G parameters, made by the
mecha-sd1 generator), and an SDXL checkpoint with a LoRA:

- ``2``: weighted_sum of 2 models, fp16 out, against the minimal loop (bench/baseline.py);
- ``8``: n_average of 8 models, against the minimal loop;
- ``32``: n_average of 32 models (hard links to the 8 files, so the page cache holds them): memory must
  stay within 10% of the 8-model run, wall time must grow linearly with the bytes read;
- ``lora``: rank-32 kohya LoRAs baked into an SDXL checkpoint, against a plain copy of the checkpoint:
  a LoRA of the linear layers (kohya's default) and a LoCon (the 3x3 convolutions too).

Each run is a separate process; its peak private memory is the largest sum of ``RssAnon`` over the
process tree, sampled every 10 ms. Each measurement is the fastest of ``--repeat`` runs (3). Inputs are read once before each run so both sides start from a
warm page cache. Throughput is bytes read plus bytes written, per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import ensure_lora, ensure_sd1, ensure_sdxl  # noqa: E402


@dataclasses.dataclass
class Result:
    scenario: str
    wall: float
    peak_mib: float
    bytes_moved: int
    ratio: float | None = None
    against: str = ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


REPEAT = 3


def measure(command: list[str], inputs: list[Path], output: Path, repeat: int) -> tuple[float, float, int]:
    """The fastest wall seconds of `repeat` runs, the highest peak private MiB of the process tree, and
    bytes read + written. (On a shared VM a run can take twice as long as the next for reasons
    outside the process: the fastest run is the one that measures the program.)"""
    runs = [_measure_once(command, inputs, output) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]


def _measure_once(command: list[str], inputs: list[Path], output: Path) -> tuple[float, float, int]:
    for path in dict.fromkeys(p.resolve() for p in inputs):  # warm the page cache
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    output.unlink(missing_ok=True)
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_rss_anon_kib(p) for p in _descendants(process.pid)))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = process.wait()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    moved = sum(p.stat().st_size for p in inputs) + output.stat().st_size
    output.unlink()
    return wall, peak / 1024, moved


def recipe_file(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.mecha"
    path.write_text("\n".join(lines) + "\n")
    return path


def mecha(recipe: Path, output: Path, threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "mecha_core", "merge", str(recipe), "-o", str(output), "--quiet"]
    return command + (["--threads", str(threads)] if threads else [])


def baseline(inputs: list[Path], output: Path) -> list[str]:
    return [sys.executable, str(HERE / "baseline.py"), str(output), *map(str, inputs)]


def model_lines(paths: list[Path]) -> list[str]:
    return [f'model "{p}"' for p in paths]


def run(args: argparse.Namespace) -> list[Result]:
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    out = data / "out.safetensors"
    results: list[Result] = []
    if {"2", "8", "32"} & set(args.only):
        models = ensure_sd1(data, 8)
    if "2" in args.only:
        two = models[:2]
        recipe = recipe_file(data, "two", model_lines(two) + ['merge "weighted_sum" &0 &1 alpha=0.5'])
        base = Result("minimal loop, 2 models", *measure(baseline(two, out), two, out, args.repeat))
        ours = Result("mecha weighted_sum, 2 models", *measure(mecha(recipe, out, args.threads), two, out, args.repeat))
        ours.ratio, ours.against = ours.wall / base.wall, "minimal loop"
        results += [base, ours]
    if {"8", "32"} & set(args.only):
        recipe = recipe_file(data, "eight", model_lines(models) + ['merge "n_average" ' + " ".join(f"&{i}" for i in range(8))])
        eight = Result("mecha n_average, 8 models", *measure(mecha(recipe, out, args.threads), models, out, args.repeat))
        if "8" in args.only:
            base = Result("minimal loop, 8 models", *measure(baseline(models, out), models, out, args.repeat))
            eight.ratio, eight.against = eight.wall / base.wall, "minimal loop"
            results += [base]
        results.append(eight)
    if "32" in args.only:
        links = []
        for i in range(32):
            link = data / f"link{i:02d}.safetensors"
            if not link.exists():
                os.link(models[i % 8], link)
            links.append(link)
        recipe = recipe_file(data, "thirtytwo", model_lines(links) + ['merge "n_average" ' + " ".join(f"&{i}" for i in range(32))])
        many = Result("mecha n_average, 32 models", *measure(mecha(recipe, out, args.threads), links, out, args.repeat))
        many.ratio, many.against = (many.wall / many.bytes_moved) / (eight.wall / eight.bytes_moved), "8 models, per byte"
        results.append(many)
        print(f"32 vs 8 models: peak memory {many.peak_mib / eight.peak_mib - 1:+.1%}", file=sys.stderr)
    if "lora" in args.only:
        checkpoint = ensure_sdxl(data)
        copy = recipe_file(data, "copy", [f'model "{checkpoint}"'])
        plain = Result("mecha plain copy, SDXL", *measure(mecha(copy, out, args.threads), [checkpoint], out, args.repeat))
        results.append(plain)
        for conv, what in ((False, "LoRA (linear layers)"), (True, "LoCon (linear and 3x3 conv layers)")):
            lora = ensure_lora(data, conv=conv)
            bake = recipe_file(data, "bake-locon" if conv else "bake",
                               [f'model "{checkpoint}"', f'model "{lora}"', 'merge "add_difference" &0 &1 alpha=0.8'])
            baked = Result(f"mecha SDXL + rank-32 {what}", *measure(mecha(bake, out, args.threads),
                                                                    [checkpoint, lora], out, args.repeat))
            baked.ratio, baked.against = baked.wall / plain.wall, "plain copy"
            results.append(baked)
    return results


def table(results: list[Result]) -> str:
    rows = ["| scenario | wall (s) | ratio | against | peak private memory (MiB) | throughput (GB/s) |",
            "|---|---:|---:|---|---:|---:|"]
    for r in results:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        rows.append(f"| {r.scenario} | {r.wall:.2f} | {ratio} | {r.against} | {r.peak_mib:.0f} | "
                    f"{r.bytes_moved / r.wall / 1e9:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data"), help="folder for the generated checkpoints")
    parser.add_argument("--only", nargs="+", default=["2", "8", "32", "lora"], choices=["2", "8", "32", "lora"])
    parser.add_argument("--threads", type=int, help="mecha's --threads (default: mecha's own choice)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    print(table(run(args)))


if __name__ == "__main__":
    main()
