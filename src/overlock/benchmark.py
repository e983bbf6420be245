"""Side-by-side speed measurements: throughput, latency, peak memory, parameters and MACs of timm models.

Every model runs at its own best settings. For inference, an OverLoCK model is measured as
``optimize_for_inference`` converts it (``plain:NAME`` measures the plain model in deploy form), the official
implementation (``official:NAME``) in its deploy form, other timm models re-parameterised where they can be.
Each model runs in both memory layouts (NCHW and channels-last) unless one is asked for, and the faster one
counts; the table says which.

Timing: all models are built in one child process and their steps timed round-robin (model A, B, C, A, B, C,
...), so that a shared machine's changing load hits every model alike. A model's ratio to the first one is the
median over rounds of the paired ratio (the first model's time over its time in the same round), which a slow
spell during part of the run moves less than a ratio of medians. Peak memory: each model in a fresh child
process of its own, so that the figure is its own: CUDA's allocator statistics on a GPU, the child's peak
resident set size on a CPU.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import timm
import torch

import overlock  # noqa: F401  (registers the models)

from .analysis import PAPER_FIGURES, count_macs, count_params
from .models import builds_overlock, optimize_for_inference
from .official import PREFIX as OFFICIAL_PREFIX
from .official import load_official_model

PLAIN_PREFIX = "plain:"
# ImageNet-1k top-1 (%) at 224 px of peers trained on ImageNet-1k alone, from timm's published results
# (results-imagenet.csv: convnext_*.fb_in1k, convnext_nano.d1h_in1k, convnext_pico.d1_in1k, resnet*.a1_in1k)
PEER_TOP1: dict[str, float] = {
    "convnext_pico": 79.5, "convnext_nano": 80.8, "convnext_tiny": 82.1, "convnext_small": 83.1,
    "convnext_base": 83.8, "resnet18": 71.5, "resnet50": 80.4,
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


@dataclass
class BenchConfig:
    """What to measure: one setting applied to every model of a run."""

    batch_size: int = 8
    img_size: int = 224
    device: str = "cpu"
    dtype: str = "fp32"  # fp32, or bf16/fp16 autocast
    memory_format: str = "best"  # 'best' (both measured, the faster one counts), 'nchw' or 'nhwc'
    compile: bool = False
    mode: str = "infer"  # 'infer' (no grad, eval) or 'train' (forward, backward, optimizer step)
    warmup: int = 2
    iters: int = 6
    threads: int | None = None
    official_repo: str | None = None  # a clone of LMMMEng/OverLoCK, for 'official:<name>' models
    official_av: str = "unfold"  # what computes na2d_av in the official model: natten, unfold or overlock


@dataclass
class BenchResult:
    model: str
    params_m: float
    gmacs: float
    images_per_s: float
    latency_ms: float  # median time of one batch
    peak_mem_mb: float
    top1: float | None
    ratio: float = 1.0  # throughput relative to the first model of the run: median of the per-round ratios
    memory_format: str = "nchw"  # the layout the figures are for
    settings: dict[str, Any] = field(default_factory=dict)


def top1_of(name: str) -> float | None:
    """The published ImageNet-1k top-1 of ``name`` (paper figures for OverLoCK, timm's results for peers)."""
    base = name.removeprefix(OFFICIAL_PREFIX).removeprefix(PLAIN_PREFIX).removesuffix("_reparam")
    if base in PAPER_FIGURES:
        return PAPER_FIGURES[base]["top1"]
    return PEER_TOP1.get(name)


def _build(name: str, cfg: BenchConfig) -> torch.nn.Module:
    """The model to measure in the form it is counted in: for inference the deploy form (re-parameterised)."""
    infer = cfg.mode == "infer"
    if name.startswith(OFFICIAL_PREFIX):
        model = load_official_model(cfg.official_repo, name, cfg.official_av)
        if infer:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints while merging
                model.reparam()  # the official deploy conversion
        return model
    timm_name = name.removeprefix(PLAIN_PREFIX)
    ours = builds_overlock(timm_name)
    model = timm.create_model(timm_name, **({"with_aux_head": False} if ours and infer else {}))
    if infer:
        timm.utils.reparameterize_model(model.eval(), inplace=True)
    return model


def _converted(name: str, model: torch.nn.Module, cfg: BenchConfig) -> torch.nn.Module:
    """``model`` as it runs inference at its best: our models converted by ``optimize_for_inference``."""
    ours = not name.startswith((OFFICIAL_PREFIX, PLAIN_PREFIX)) and builds_overlock(name)
    if cfg.mode == "infer" and ours:
        return optimize_for_inference(model, inplace=True)
    return model


def _logits(out: Any) -> torch.Tensor:
    """Main logits from any model's train-mode output (tensor, tuple or the official dict)."""
    if isinstance(out, dict):
        return out["main"]
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Prepared:
    """A model ready to be stepped, with its size."""

    step: Callable[[], None]
    params: int
    macs: int


def _prepare(name: str, memory_format: str, cfg: BenchConfig, count: bool = True) -> _Prepared:
    """``name`` built and ready to step in ``memory_format`` (its size counted unless ``count`` is False, then 0);
    errors, while building or stepping, name the model."""

    def named(exc: Exception) -> RuntimeError:
        return RuntimeError(f"{name}: {type(exc).__name__}: {exc}")

    try:
        prepared = _prepare_model(name, memory_format, cfg, count)
    except Exception as exc:
        raise named(exc) from exc
    step = prepared.step

    def named_step() -> None:
        try:
            step()
        except Exception as exc:
            raise named(exc) from exc

    prepared.step = named_step
    return prepared


def _prepare_model(name: str, memory_format: str, cfg: BenchConfig, count: bool) -> _Prepared:
    device = torch.device(cfg.device)
    layout = MEMORY_FORMATS[memory_format]
    model = _build(name, cfg)
    params = count_params(model) if count else 0
    macs = count_macs(model, (3, cfg.img_size, cfg.img_size)) if count else 0
    model = _converted(name, model.to(device), cfg).to(memory_format=layout)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device).contiguous(memory_format=layout)
    target = torch.randint(0, 1000, (cfg.batch_size,), device=device)
    run = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast(device.type, dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != "fp32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if cfg.mode == "train" else None

    def step() -> None:
        if optimizer is None:
            with torch.no_grad(), autocast:
                run(x)
        else:
            with autocast:
                loss = torch.nn.functional.cross_entropy(_logits(run(x)).float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return _Prepared(step, params, macs)


def _set_threads(cfg: BenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def time_round_robin(steps: list[Callable[[], None]], warmup: int, iters: int) -> list[list[float]]:
    """Seconds of each timed call of each step, the steps called in turn (A, B, C, A, B, C, ...)."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for step, t in zip(steps, times):
            start = time.perf_counter()
            step()
            t.append(time.perf_counter() - start)
    return times


def _candidates(cfg: BenchConfig) -> list[str]:
    return list(MEMORY_FORMATS) if cfg.memory_format == "best" else [cfg.memory_format]


def _time_models(models: list[str], cfg: BenchConfig) -> list[dict[str, tuple[int, int, list[float]]]]:
    """Per model, per memory format: (params, MACs, seconds of each timed step), all steps round-robin."""
    _set_threads(cfg)
    runs = [(name, fmt) for name in models for fmt in _candidates(cfg)]
    prepared = [_prepare(name, fmt, cfg, count=fmt == _candidates(cfg)[0]) for name, fmt in runs]
    times = time_round_robin([p.step for p in prepared], cfg.warmup, cfg.iters)
    sizes = {name: (p.params, p.macs) for (name, fmt), p in zip(runs, prepared) if fmt == _candidates(cfg)[0]}
    out: list[dict[str, tuple[int, int, list[float]]]] = [{} for _ in models]
    for (name, fmt), t in zip(runs, times):
        out[models.index(name)][fmt] = (*sizes[name], t)
    return out


def faster_format(per_format: dict[str, tuple[int, int, list[float]]]) -> str:
    """The memory format whose steps took the least time (median)."""
    return min(per_format, key=lambda fmt: statistics.median(per_format[fmt][2]))


def paired_ratio(base_times: list[float], times: list[float]) -> float:
    """Median over rounds of ``base time / time``: throughput relative to the base model, round by round."""
    return statistics.median(b / t for b, t in zip(base_times, times))


def _peak_memory_mb(name: str, memory_format: str, cfg: BenchConfig) -> float:
    """Peak memory (MiB) of a process that builds ``name`` and runs a few steps of it."""
    _set_threads(cfg)
    device = torch.device(cfg.device)
    prepared = _prepare(name, memory_format, cfg, count=False)  # sizes come from the timing process
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(min(cfg.warmup, 1) + 1):
        prepared.step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(fn: Callable[..., Any], args: tuple, queue: mp.Queue) -> None:
    try:
        queue.put(fn(*args))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(exc if isinstance(exc, RuntimeError) else RuntimeError(f"{type(exc).__name__}: {exc}"))


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (its own memory statistics), re-raising its error here."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if isinstance(result, Exception):
        raise result
    return result


def check_config(models: list[str], cfg: BenchConfig) -> None:
    """Clear errors for settings and model names that cannot be measured."""
    unknown = [
        m for m in models
        if not m.startswith(OFFICIAL_PREFIX) and m.removeprefix(PLAIN_PREFIX) not in timm.list_models()
    ]
    if unknown:
        raise ValueError(f"unknown model(s): {', '.join(unknown)}")
    if any(m.startswith(OFFICIAL_PREFIX) for m in models) and not cfg.official_repo:
        raise ValueError("'official:' models need official_repo (--official-repo): a clone of LMMMEng/OverLoCK")
    if cfg.mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {cfg.mode!r}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.memory_format not in ("best", *MEMORY_FORMATS):
        raise ValueError(f"memory_format must be 'best', 'nchw' or 'nhwc', got {cfg.memory_format!r}")
    if cfg.batch_size < 1 or cfg.img_size < 1 or cfg.iters < 1 or cfg.warmup < 0:
        raise ValueError("batch size, image size and iterations must be positive (warmup at least 0)")


def benchmark(models: list[str], cfg: BenchConfig) -> list[BenchResult]:
    """Measure ``models`` with the same settings, each in its faster memory format: speed round-robin in one
    child process, memory one by one."""
    check_config(models, cfg)
    timings = _in_child(_time_models, models, cfg)
    chosen = [faster_format(per_format) for per_format in timings]
    base_times = timings[0][chosen[0]][2]
    results = []
    for name, per_format, fmt in zip(models, timings, chosen):
        params, macs, times = per_format[fmt]
        peak = _in_child(_peak_memory_mb, name, fmt, cfg)
        latency = statistics.median(times)
        results.append(BenchResult(
            name, params / 1e6, macs / 1e9, cfg.batch_size / latency, latency * 1000, peak, top1_of(name),
            paired_ratio(base_times, times), fmt, asdict(cfg),
        ))
    return results


def format_table(results: list[BenchResult]) -> str:
    """A text table, with each model's throughput relative to the first one (``BenchResult.ratio``)."""
    head = (f"{'model':<22} {'layout':>6} {'params M':>8} {'GMACs':>6} {'img/s':>8} {'ratio':>6} {'ms/batch':>9} "
            f"{'peak MB':>8} {'top-1':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        top1 = f"{r.top1:.1f}" if r.top1 is not None else "-"
        lines.append(
            f"{r.model:<22} {r.memory_format:>6} {r.params_m:>8.2f} {r.gmacs:>6.2f} {r.images_per_s:>8.2f} "
            f"{r.ratio:>6.2f} {r.latency_ms:>9.1f} {r.peak_mem_mb:>8.0f} {top1:>6}"
        )
    return "\n".join(lines)


def plot_speed_accuracy(results: list[BenchResult], path: str, title: str) -> None:
    """Throughput against published ImageNet top-1 for the models that have one, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        if r.top1 is None:
            continue
        ours = r.model.startswith(("overlock", PLAIN_PREFIX))
        ax.scatter(r.images_per_s, r.top1, marker="*" if ours else "o", s=140 if ours else 60,
                   color="tab:red" if ours else "tab:blue")
        ax.annotate(r.model, (r.images_per_s, r.top1), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(xlabel="throughput (images/s)", ylabel="ImageNet-1k top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
