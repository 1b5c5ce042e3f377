"""Speed and memory of mecha against a minimal merge loop, measured in the same invocation.

    python bench/run.py                       # every scenario (generates ~20 GB of checkpoints once)
    python bench/run.py --only 2 8            # some scenarios
    python bench/run.py --only flux           # FLUX.1 (generates 2 x 11.9 GB; not in the default run)
    python bench/run.py --data /big/disk      # where the checkpoints live (default: bench/data)

Scenarios, on real-size synthetic SD1.5 fp16 checkpoints (1131 keys, 1.07 G parameters, made by the
mecha-sd1 generator), and an SDXL checkpoint with a LoRA:

- ``2``: weighted_sum of 2 models, fp16 out, against the minimal loop (bench/baseline.py);
- ``8``: n_average of 8 models, against the minimal loop;
- ``32``: n_average of 32 models (hard links to the 8 files, so the page cache holds them): memory must
  stay within 10% of the 8-model run, wall time must grow linearly with the bytes read;
- ``lora``: rank-32 kohya LoRAs baked into an SDXL checkpoint, against a plain copy of the checkpoint:
  a LoRA of the linear layers (kohya's default), a LoCon (the 3x3 convolutions too), and a LyCORIS LoHa
  and LoKr of the same layers as the LoCon.
- ``llm``: two random Llama models of TinyLlama's shapes (1.1 G parameters, fp16) merged with ties and
  with slerp from one mergekit configuration, mecha against mergekit-yaml (bench/llm.py).
- ``flux``: weighted_sum of two real-size FLUX.1 transformer-only fp8 files (11.9 GB each, made by the
  mecha-flux generator) into fp8, against the minimal loop (``--fp8``) and a plain copy of one file.

Each run is a separate process; its peak private memory is the largest sum of ``RssAnon`` over the
process tree, sampled every 10 ms. Each measurement is the fastest of ``--repeat`` runs (3); the runs
compared with each other take turns, round after round. Before each run the inputs are read (both
sides start from a warm page cache) and the previous output is deleted and synced away. Throughput is bytes read plus bytes written, per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import ensure_flux, ensure_lora, ensure_sd1, ensure_sdxl  # noqa: E402
from llm import config_file, ensure_llamas, ensure_mergekit  # noqa: E402


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


def measure(runs: list[tuple[list[str], list[Path]]] | list[tuple[list[str], list[Path], Path]], output: Path,
            repeat: int) -> list[tuple[float, float, int]]:
    """For each (command, inputs): the fastest wall seconds of `repeat` runs, the highest peak private
    MiB of the process tree, and bytes read + written. The commands take turns, round after round, so
    that a slow spell of the VM's disk (a run can take twice as long as the next for reasons outside
    the process) falls on all of them alike; the fastest run is the one that measures the program.
    A run may name its own output (a file or a folder) as a third element."""
    rounds = []
    for round_number in range(1, repeat + 1):
        rounds.append([_measure_once(run[0], run[1], run[2] if len(run) > 2 else output) for run in runs])
        # every run's time, so that a reader sees the spread the fastest was picked from
        print(f"round {round_number}: " + ", ".join(f"{wall:.2f} s" for wall, _, _ in rounds[-1]), file=sys.stderr)
    return [(min(r[i][0] for r in rounds), max(r[i][1] for r in rounds), rounds[0][i][2]) for i in range(len(runs))]


def _measure_once(command: list[str], inputs: list[Path], output: Path) -> tuple[float, float, int]:
    for path in dict.fromkeys(p.resolve() for p in inputs):  # warm the page cache
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    _remove(output)
    os.sync()  # the previous run's output, written back and freed, costs this run nothing
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
    moved = sum(p.stat().st_size for p in inputs) + _size(output)
    _remove(output)
    return wall, peak / 1024, moved


def _remove(output: Path) -> None:
    if output.is_dir():
        shutil.rmtree(output)
    else:
        output.unlink(missing_ok=True)


def _size(output: Path) -> int:
    if output.is_dir():
        return sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return output.stat().st_size


def recipe_file(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.mecha"
    path.write_text("\n".join(lines) + "\n")
    return path


def mecha(recipe: Path, output: Path, threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "mecha_core", "merge", str(recipe), "-o", str(output), "--quiet"]
    return command + (["--threads", str(threads)] if threads else [])


def baseline(inputs: list[Path], output: Path, fp8: bool = False) -> list[str]:
    return [sys.executable, str(HERE / "baseline.py"), *(["--fp8"] if fp8 else []), str(output), *map(str, inputs)]


def model_lines(paths: list[Path]) -> list[str]:
    return [f'model "{p}"' for p in paths]


def hard_links(folder: Path, prefix: str, sources: list[Path], count: int) -> list[Path]:
    """`count` input files that are hard links to `sources` in turn: many inputs for the disk space of a few."""
    links = []
    for i in range(count):
        link = folder / f"{prefix}{i:02d}.safetensors"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
        links.append(link)
    return links


def run(args: argparse.Namespace) -> list[Result]:
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or data) / "out.safetensors"
    results: list[Result] = []
    if {"2", "8", "32"} & set(args.only):
        models = ensure_sd1(data, 8)
    if "2" in args.only:
        two = models[:2]
        recipe = recipe_file(data, "two", model_lines(two) + ['merge "weighted_sum" &0 &1 alpha=0.5'])
        measured = measure([(baseline(two, out), two), (mecha(recipe, out, args.threads), two)], out, args.repeat)
        base = Result("minimal loop, 2 models", *measured[0])
        ours = Result("mecha weighted_sum, 2 models", *measured[1])
        ours.ratio, ours.against = ours.wall / base.wall, "minimal loop"
        results += [base, ours]
    if {"8", "32"} & set(args.only):
        recipe = recipe_file(data, "eight", model_lines(models) + ['merge "n_average" ' + " ".join(f"&{i}" for i in range(8))])
        runs = [(mecha(recipe, out, args.threads), models)] + ([(baseline(models, out), models)] if "8" in args.only else [])
        measured = measure(runs, out, args.repeat)
        eight = Result("mecha n_average, 8 models", *measured[0])
        if "8" in args.only:
            base = Result("minimal loop, 8 models", *measured[1])
            eight.ratio, eight.against = eight.wall / base.wall, "minimal loop"
            results += [base]
        results.append(eight)
    if "32" in args.only:
        links = hard_links(data, "link", models, 32)
        recipe = recipe_file(data, "thirtytwo", model_lines(links) + ['merge "n_average" ' + " ".join(f"&{i}" for i in range(32))])
        many = Result("mecha n_average, 32 models", *measure([(mecha(recipe, out, args.threads), links)], out, args.repeat)[0])
        many.ratio, many.against = (many.wall / many.bytes_moved) / (eight.wall / eight.bytes_moved), "8 models, per byte"
        results.append(many)
        print(f"32 vs 8 models: peak memory {many.peak_mib / eight.peak_mib - 1:+.1%}", file=sys.stderr)
    if "lora" in args.only:
        checkpoint = ensure_sdxl(data)
        copy = recipe_file(data, "copy", [f'model "{checkpoint}"'])
        runs, names = [(mecha(copy, out, args.threads), [checkpoint])], ["mecha plain copy, SDXL"]
        for conv, algo, what in ((False, "lora", "LoRA (linear layers)"), (True, "lora", "LoCon (linear and 3x3 conv layers)"),
                                 (True, "loha", "LoHa (linear and 3x3 conv layers)"),
                                 (True, "lokr", "LoKr (linear and 3x3 conv layers)")):
            lora = ensure_lora(data, conv=conv, algo=algo)
            bake = recipe_file(data, f"bake-{algo}-{'conv' if conv else 'linear'}",
                               [f'model "{checkpoint}"', f'model "{lora}"', 'merge "add_difference" &0 &1 alpha=0.8'])
            runs.append((mecha(bake, out, args.threads), [checkpoint, lora]))
            names.append(f"mecha SDXL + rank-32 {what}")
        plain, *baked = [Result(name, *m) for name, m in zip(names, measure(runs, out, args.repeat))]
        for result in baked:
            result.ratio, result.against = result.wall / plain.wall, "plain copy"
        results += [plain, *baked]
    if "llm" in args.only:
        llamas = ensure_llamas(data)
        mergekit_yaml = ensure_mergekit(data)
        weights = [folder / "model.safetensors" for folder in llamas]
        for method in args.llm_methods:
            config = config_file(data, llamas, method)
            runs = [([str(mergekit_yaml), str(config), str(data / "mergekit-out")], weights, data / "mergekit-out"),
                    (mecha(config, out, args.threads), weights, out)]
            theirs_result, ours_result = (Result(name, *m) for name, m in zip(
                (f"mergekit {method}, 2 Llama 1.1B fp16", f"mecha {method}, 2 Llama 1.1B fp16"),
                measure(runs, out, args.repeat)))
            ours_result.ratio, ours_result.against = ours_result.wall / theirs_result.wall, "mergekit"
            results += [theirs_result, ours_result]
            print(f"{method}: peak memory {ours_result.peak_mib / theirs_result.peak_mib:.2f}x mergekit's",
                  file=sys.stderr)
    if "flux" in args.only:
        two = ensure_flux(data, 2)
        merge = recipe_file(data, "flux-two", model_lines(two) + ['merge "weighted_sum" &0 &1 alpha=0.5'])
        copy = recipe_file(data, "flux-copy", model_lines(two[:1]))
        fp8 = ["--save-dtype", "fp8"]
        runs = [(baseline(two, out, fp8=True), two), (mecha(copy, out, args.threads) + fp8, two[:1]),
                (mecha(merge, out, args.threads) + fp8, two)]
        loop, plain, ours = [Result(name, *m) for name, m in zip(
            ["minimal loop, 2 FLUX.1 fp8", "mecha plain copy, FLUX.1 fp8", "mecha weighted_sum, 2 FLUX.1 fp8 -> fp8"],
            measure(runs, out, args.repeat))]
        ours.ratio, ours.against = ours.wall / loop.wall, "minimal loop"
        print(f"FLUX.1 weighted_sum vs plain copy: {ours.wall / plain.wall:.2f}x", file=sys.stderr)
        results += [loop, plain, ours]
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
    parser.add_argument("--only", nargs="+", default=["2", "8", "32", "lora", "llm"],
                        choices=["2", "8", "32", "lora", "llm", "flux"])
    parser.add_argument("--llm-methods", nargs="+", default=["ties", "slerp"], choices=["ties", "slerp"],
                        help="the mergekit methods of the llm scenario")
    parser.add_argument("--out", help="folder for the outputs (default: --data); another disk or /dev/shm when "
                                      "the data's disk lacks room for one more output (12 GB for flux)")
    parser.add_argument("--threads", type=int, help="mecha's --threads (default: mecha's own choice)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    print(table(run(args)))


if __name__ == "__main__":
    main()
