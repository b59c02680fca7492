"""Population trials against separate runs: configurations trained per second, side by side.

For each case and population size K, the same K configurations (different DM knobs, baselines
and seeds) are trained twice in one run: as one population (``train_population``) and as K
separate runs of today's ``train()``, one after the other. Reported: configurations per second
of each and their ratio (population / separate), from wall time and from this process's CPU
time (``cpu_ratio``: on a CPU shared with other work, wall time also measures the others). The
order of the two arms alternates between repeats; medians over repeats.

Cases: ``digits-mlp`` (the embedded default, 40% symmetric noise), ``mnist1d-cnn`` (the 1-D CNN,
its default batch 256), ``resnet20`` (CIFAR-shaped random uint8 images, augmentation on, a few
steps). On ``--device cuda`` the ResNet-20 case runs at batch 128 under the default mixed
precision and reports aggregate training images/s of the population against one model's
(``train()``), each after a warm-up epoch; the separate arm is then 4 runs, not K (one model's
speed does not depend on K), and the row also gives the device memory the population peaked at.

``--layouts`` also times one forward+backward of K stacked members in the candidate layouts
(``torch.func.vmap`` over ``functional_call``, batched matrix products, grouped convolutions)
against K single-model steps: how dm_tune._popmodels chose its layouts.

    python benchmarks/population.py --threads 1,2 --json benchmarks/results/population_cpu.json
    python benchmarks/population.py --device cuda --repeats 3 --sizes 1,4,16,64,128 --dense-reference \
        --json benchmarks/results/population_cuda.json
    python benchmarks/population.py --quick     # smoke test (seconds)

``--dense-reference`` (CUDA) also times one ResNet-20's bare training step (random batch on the
device, no data pipeline or evaluation) at batch 128 and at K x 128 for the largest K: what one
model does with a population's images per step. ``--cudnn-benchmark`` turns on cuDNN's
autotuning (``torch.backends.cudnn.benchmark``) for both arms.

``--amp off,bf16`` times every arm in each precision listed, all alternating in one block, and
adds the fastest population against the fastest separate runs, whichever precision each was
fastest in (on a CPU with native bf16, e.g. AMX, a population's batched products are several
times faster in bf16 while a single small model's run is not; the configurations' own ``amp``,
``auto``, is float32 on the CPU and bf16 on CUDA).

``--profile`` then profiles one more population run of each case at its largest K (in the last
``--amp`` precision listed; torch's profiler, after the timed runs) and lists its operators by
self CPU time (on CUDA, its kernels by device time), the top 25 with their share of the profiled
total: where the population's time goes, next to the ratio it reached.

``--resnet-images 50000`` trains the ResNet-20 case over one epoch of a CIFAR-10-sized set
instead of its few steps (on CUDA at K = 64, its members' copies are over the stacking limit:
what a real CIFAR-10 population reads). With ``--profile`` it profiles that whole epoch too,
which on an H200 at K = 64 did not finish in 200 s (the profiler records every kernel of 312
steps): profile the default few steps instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_tune import _popmodels  # noqa: E402
from dm_tune.data import prepare  # noqa: E402

import _args  # noqa: E402
import _cases  # noqa: E402
import _machine  # noqa: E402
import _timing  # noqa: E402


def run_case(name: str, k: int, threads: int, repeats: int, quick: bool, device: str,
             images: int | None = None, amps: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per precision in ``amps`` (one row, the configurations' own ``amp``, without it),
    their arms all timed alternating in one block; with several, the last row also gives the
    fastest population against the fastest separate runs, whichever precisions those were."""
    torch.set_num_threads(threads)
    source, shared = _cases.case(name, quick, device, images)
    cfgs = _cases.configs(shared, k, device)
    datas = [prepare(c, source) for c in cfgs]
    separate_runs = k if device != "cuda" else min(k, 4)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    variants = {amp: [c.replace(amp=amp) for c in cfgs] for amp in amps} if amps else None
    times = _timing.population_and_separate(cfgs, datas, repeats, torch.device(device), separate_runs, variants)
    rows = []
    for amp in amps or [None]:
        suffix = f"_{amp}" if amp else ""
        row = _row(name, device, threads, k, repeats, separate_runs, times["pop" + suffix], times["sep" + suffix])
        row["amp"] = amp or cfgs[0].amp
        if name == "resnet20":
            n, batch = len(datas[0].train), cfgs[0].batch_size or 128
            images = n * int(cfgs[0].epochs or 1)
            row.update(batch=batch, train_images_per_config=images,
                       population_images_per_s=k * images / row["population_s"],
                       one_model_images_per_s=separate_runs * images / row["separate_s"])
        rows.append(row)
    if len(rows) > 1:
        pop = max(rows, key=lambda r: r["population_configs_per_s"])
        sep = max(rows, key=lambda r: r["separate_configs_per_s"])
        rows[-1].update(fastest_population_amp=pop["amp"], fastest_separate_amp=sep["amp"],
                        fastest_ratio=pop["population_configs_per_s"] / sep["separate_configs_per_s"])
    if device == "cuda":  # the population's, the larger of the two arms
        rows[-1]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return rows


def _row(name: str, device: str, threads: int, k: int, repeats: int, separate_runs: int,
         pop_times: list[tuple[float, float]], sep_times: list[tuple[float, float]]) -> dict[str, Any]:
    pop_s, sep_s = [w for w, _ in pop_times], [w for w, _ in sep_times]
    pop_cpu, sep_cpu = [c for _, c in pop_times], [c for _, c in sep_times]
    pop, sep = statistics.median(pop_s), statistics.median(sep_s)
    row: dict[str, Any] = {
        "case": name, "device": device, "threads": threads, "k": k, "repeats": repeats,
        "population_s": pop, "separate_s": sep, "separate_runs": separate_runs,
        "population_configs_per_s": k / pop, "separate_configs_per_s": separate_runs / sep,
        "population_s_all": pop_s, "separate_s_all": sep_s,
        # CPU time of this process: on a shared CPU, less sensitive than wall time to what else runs.
        "population_cpu_s_all": pop_cpu, "separate_cpu_s_all": sep_cpu,
    }
    row["ratio"] = row["population_configs_per_s"] / row["separate_configs_per_s"]
    row["cpu_ratio"] = (statistics.median(sep_cpu) / separate_runs) / (statistics.median(pop_cpu) / k)
    return row


def profile_case(name: str, k: int, threads: int, quick: bool, device: str, top: int = 25,
                 images: int | None = None, amp: str | None = None) -> dict[str, Any]:
    """One population run of ``name`` at K = ``k`` (in precision ``amp``, if given) under torch's
    profiler (after a warm-up run): on the CPU its operators by self CPU time; on CUDA its kernels
    by device time."""
    from torch.profiler import ProfilerActivity, profile

    from dm_tune.population import train_population

    torch.set_num_threads(threads)
    source, shared = _cases.case(name, quick, device, images)
    cfgs = [c.replace(amp=amp) if amp else c for c in _cases.configs(shared, k, device)]
    datas = [prepare(c, source) for c in cfgs]
    cuda = device == "cuda"
    train_population(cfgs, datas)  # warm-up: allocator, kernels, lazy imports
    _timing.sync(torch.device(device))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        train_population(cfgs, datas)
        _timing.sync(torch.device(device))
    wall = time.perf_counter() - t0

    def self_us(event: Any) -> float:
        if not cuda:
            return float(event.self_cpu_time_total)
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    if cuda:  # the kernels and copies alone: an operator's device time is its kernels', counted twice otherwise
        kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        events = kernels or events
    total = sum(self_us(e) for e in events)
    rows = [{"name": e.key, "calls": e.count, "self_ms": round(self_us(e) / 1e3, 3),
             "share": round(self_us(e) / total, 4)} for e in sorted(events, key=self_us, reverse=True)[:top]]
    return {"case": name, "device": device, "threads": threads, "k": k, "amp": cfgs[0].amp, "wall_s": round(wall, 3),
            "clock": "device" if cuda else "cpu", "total_self_ms": round(total / 1e3, 3), "top": rows}


def dense_reference(batch: int, steps: int = 20) -> dict[str, Any]:
    """One ResNet-20 training step (bf16 autocast, channels-last, SGD) on a random CUDA batch,
    nothing else: images/s over ``steps`` steps after a warm-up."""
    import torch.nn.functional as F

    from dm_tune.models import ModelSpec, build_model

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("resnet20", ModelSpec((3, 32, 32), "image", 10)).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    s = _timing.time_block(step, steps, dev)
    return {"model": "resnet20", "batch": batch, "steps": steps, "ms_per_step": s * 1e3, "images_per_s": batch / s}


# --- layouts: one forward+backward of K members ------------------------------------------------


def _bench(fn, n: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def layouts(k: int, threads: int, quick: bool) -> list[dict[str, Any]]:
    """ms per forward+backward of K members: single models one after the other, vmap over
    functional_call, dm_tune's population layout and (CNN) grouped convolutions."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from dm_tune._popmodels import PopulationModel
    from dm_tune.models import ModelSpec, build_model

    torch.set_num_threads(threads)
    rows = []
    n = 2 if quick else 3
    cases = (("mlp", ModelSpec((64,), "vector", 10), 64), ("cnn", ModelSpec((40,), "signal", 10), 256))
    for name, spec, batch in cases:
        members = [build_model(name, spec) for _ in range(k)]
        x = torch.randn(k, batch, *spec.input_shape)
        params, buffers = stack_module_state(members)
        base = copy.deepcopy(members[0]).to("meta")
        vf = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)), randomness="different")
        pop = PopulationModel(members)
        times = {
            "single_x_k": _bench(lambda: [m(x[i]).sum().backward() for i, m in enumerate(members)], n),
            "vmap": _bench(lambda: vf(params, buffers, x).sum().backward(), n),
            "population": _bench(lambda: pop(x).sum().backward(), n),
        }
        if name == "cnn":
            grouped = _grouped_cnn(pop, k)
            times["grouped_conv"] = _bench(lambda: grouped(x).sum().backward(), n)
        rows.append({"model": name, "k": k, "threads": threads, "batch": batch, "ms": times})
    return rows


def _grouped_cnn(pop, k: int):
    """The 1-D CNN as grouped convolutions in a [B, K*C, L] layout (the alternative not taken)."""
    import torch.nn.functional as F

    def forward(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[1]
        h = x.transpose(0, 1).reshape(b, k, -1)
        for conv, bn in (("1", "2"), ("5", "6"), ("9", "10")):
            w = pop.get(conv + ".weight")
            h = F.conv1d(h, w.reshape(-1, *w.shape[2:]), pop.get(conv + ".bias").reshape(-1), padding=1, groups=k)
            h = F.batch_norm(h, pop.get(bn + ".running_mean").view(-1), pop.get(bn + ".running_var").view(-1),
                             pop.get(bn + ".weight").view(-1), pop.get(bn + ".bias").view(-1), True, 0.1, 1e-5)
            h = F.max_pool1d(F.relu(h), 2)
        h = h.mean(2).view(b, k, -1).transpose(0, 1)
        return torch.baddbmm(pop.get("15.bias").unsqueeze(1), h, pop.get("15.weight").transpose(1, 2))

    return forward


# --- driver ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--cases", help="comma-separated: digits-mlp, mnist1d-cnn, resnet20 "
                   "(default: all three on cpu, resnet20 on cuda)")
    p.add_argument("--sizes", type=_args.positive_ints,
                   help="population sizes K (default 1,4,16,64; resnet20 on cpu 1,4)")
    p.add_argument("--threads", type=_args.positive_ints, default="1,2",
                   help="CPU thread counts (default 1,2; cuda: 1 value used)")
    p.add_argument("--repeats", type=_args.positive_int, default=1,
                   help="repeats per arm, order alternating (median shown)")
    p.add_argument("--layouts", action="store_true", help="also time the candidate stacked layouts")
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes and budgets")
    p.add_argument("--profile", action="store_true",
                   help="then profile one population run of each case at its largest K: operators by self "
                        "CPU time, on CUDA kernels by device time")
    p.add_argument("--resnet-layout", choices=["auto", "nchw", "nhwc"], default="auto",
                   help="a ResNet population's grouped convolutions: contiguous (nchw), channels-last "
                        "(nhwc) or what dm_tune._popmodels.CHANNELS_LAST says for the device (auto)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its algorithms for each convolution shape (torch.backends.cudnn.benchmark)")
    p.add_argument("--dense-reference", action="store_true",
                   help="on cuda, also time one ResNet-20's training step at batch 128 and at K x 128 (no data "
                        "pipeline, no evaluation): what one model of the same work per step reaches")
    p.add_argument("--resnet-images", type=_args.positive_int, metavar="N",
                   help="the ResNet-20 case trains one epoch of N random images (before its 20%% validation "
                        "carve; CIFAR-10 has 50000) instead of its few steps")
    p.add_argument("--amp", help="comma-separated precisions (auto, off, bf16) to time both arms in, all "
                   "alternating in one block (default: the configurations' own, auto); with several, also the "
                   "fastest population against the fastest separate runs")
    p.add_argument("--json", help="write the results here (default benchmarks/results/population_<device>.json; "
                   "with --quick, none)")
    args = p.parse_args(argv)

    device = args.device
    if args.resnet_images is not None and args.resnet_images < 2:
        p.error(f"--resnet-images {args.resnet_images}: need at least 2 images (one for validation)")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    cases = args.cases.split(",") if args.cases else (["resnet20"] if device == "cuda" else
                                                       ["digits-mlp", "mnist1d-cnn", "resnet20"])
    unknown = [c for c in cases if c not in _cases.CASES]
    if unknown:  # (said before any case runs: a typo late in the list threw the finished cases away)
        p.error(f"--cases {args.cases}: unknown case {unknown[0]!r}; expected some of {', '.join(_cases.CASES)}")
    if args.resnet_images is not None and "resnet20" not in cases:
        p.error(f"--resnet-images {args.resnet_images}: sizes the resnet20 case, which --cases {args.cases} "
                "leaves out")
    threads = args.threads
    amps = args.amp.split(",") if args.amp else None
    if amps and not set(amps) <= {"auto", "off", "bf16"}:
        p.error(f"--amp {args.amp}: each value must be auto, off or bf16 (fp16 trains populations one member "
                "at a time)")
    if device == "cuda":
        threads = threads[:1]
    # A smoke run (--quick) writes only where it is told: its figures are not results.
    out = Path(args.json) if args.json else (
        None if args.quick else ROOT / "benchmarks" / "results" / f"population_{device}.json")
    if args.resnet_layout != "auto":
        _popmodels.CHANNELS_LAST[device] = args.resnet_layout == "nhwc"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    doc: dict[str, Any] = {"machine": _machine.machine(), "device": device, "quick": args.quick,
                           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                           "resnet_layout": "nhwc" if _popmodels.CHANNELS_LAST.get(device) else "nchw",
                           "cudnn_benchmark": args.cudnn_benchmark, "resnet_images": args.resnet_images, "amp": amps,
                           "load_average_start": _machine.load_average(), "results": [], "layouts": [], "profiles": [],
                           "dense_reference": []}
    t_start = time.perf_counter()
    for case in cases:
        default_sizes = "1,2" if args.quick else ("1,4" if case == "resnet20" and device == "cpu" else "1,4,16,64")
        sizes = args.sizes or [int(s) for s in default_sizes.split(",")]
        for t in threads:
            for k in sizes:
                for row in run_case(case, k, t, args.repeats, args.quick, device, args.resnet_images, amps):
                    doc["results"].append(row)
                    extra = (f"  images/s pop {row['population_images_per_s']:.0f} vs one model "
                             f"{row['one_model_images_per_s']:.0f}" if "population_images_per_s" in row else "")
                    print(f"{case:12s} {device} threads {t} K {k:3d} amp {row['amp']:4s}: population "
                          f"{row['population_configs_per_s']:8.3f} configs/s, separate "
                          f"{row['separate_configs_per_s']:8.3f} configs/s, ratio {row['ratio']:5.2f} "
                          f"(CPU time: {row['cpu_ratio']:5.2f}){extra}", flush=True)
                    if "fastest_ratio" in row:
                        print(f"{'':12s} fastest population (amp {row['fastest_population_amp']}) against the "
                              f"fastest separate runs (amp {row['fastest_separate_amp']}): "
                              f"ratio {row['fastest_ratio']:5.2f}", flush=True)
        if args.profile:
            prof = profile_case(case, max(sizes), threads[0], args.quick, device, images=args.resnet_images,
                                amp=amps[-1] if amps else None)
            doc["profiles"].append(prof)
            print(f"profile {case} {device} threads {prof['threads']} K {prof['k']}: {prof['wall_s']:.2f} s, "
                  f"{prof['total_self_ms']:.0f} ms of {prof['clock']} self time", flush=True)
            for r in prof["top"]:
                print(f"  {100 * r['share']:5.1f}%  {r['self_ms']:10.2f} ms  {r['calls']:7d}  {r['name'][:90]}",
                      flush=True)
    if args.dense_reference and device == "cuda":
        for batch in sorted({128, 128 * max(sizes)}):
            row = dense_reference(batch)
            doc["dense_reference"].append(row)
            print(f"dense reference: one resnet20, batch {batch:5d}: {row['images_per_s']:8.0f} images/s "
                  f"({row['ms_per_step']:.2f} ms per step)", flush=True)
    if args.layouts and device == "cpu":
        for t in threads:
            for k in ([2] if args.quick else [4, 16, 64]):
                for row in layouts(k, t, args.quick):
                    doc["layouts"].append(row)
                    ms = "  ".join(f"{name} {v:.2f}" for name, v in row["ms"].items())
                    print(f"layout {row['model']} threads {t} K {k:3d} (ms per fwd+bwd of K): {ms}", flush=True)
    doc["load_average_end"] = _machine.load_average()
    doc["wall_s"] = time.perf_counter() - t_start
    if out is None:
        print(f"done ({doc['wall_s']:.0f} s; --quick writes a file only with --json)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
