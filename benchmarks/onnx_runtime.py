"""ONNX Runtime on the CPU against PyTorch on the same model and input: the ONNX file of the deploy form (as
``overlock export --format onnx`` writes it), the plain model in eager PyTorch (NCHW and channels-last), and the
model converted by ``optimize_for_inference``, timed round-robin in one process with the same number of threads.

ONNX Runtime's speed-up over a variant is the median over rounds of (the variant's time / ONNX Runtime's time in
the same round): above 1, ONNX Runtime is faster. Needs ``pip install overlock[export]``.

    python benchmarks/onnx_runtime.py overlock_xt --threads 2 --batch-size 1 --iters 20
"""
from __future__ import annotations

import copy
import statistics
import tempfile
from pathlib import Path

import onnxruntime
import torch

from model_args import deploy_model, model_parser
from overlock import optimize_for_inference
from overlock.benchmark import paired_ratio, time_round_robin
from overlock.export import export_onnx, relative_error


def onnx_session(model: torch.nn.Module, img_size: int, threads: int, folder: Path) -> onnxruntime.InferenceSession:
    """The deploy form exported to ONNX and loaded by ONNX Runtime's CPU provider with ``threads`` threads, which
    sleep between runs: by default they spin for a while after each run, taking the cores from the PyTorch step
    timed next in the round."""
    path = export_onnx(model, folder / "model.onnx", (3, img_size, img_size))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], iters=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    model, x = deploy_model(args)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(model, args.img_size, torch.get_num_threads(), Path(folder))
    images = x.numpy()
    channels_last = x.contiguous(memory_format=torch.channels_last)
    converted = optimize_for_inference(model)
    with torch.no_grad():
        error = relative_error(session.run(None, {"images": images})[0], model(x))

    def torch_step(module: torch.nn.Module, batch: torch.Tensor):
        def run() -> None:
            with torch.no_grad():
                module(batch)
        return run

    variants = {
        "ONNX Runtime": lambda: session.run(None, {"images": images}),
        "PyTorch eager (NCHW)": torch_step(model, x),
        "PyTorch eager (channels-last)": torch_step(copy.deepcopy(model).to(memory_format=torch.channels_last),
                                                    channels_last),
        "PyTorch, optimize_for_inference": torch_step(converted, x),
    }
    times = time_round_robin(list(variants.values()), args.warmup, args.iters)
    base = times[0]
    print(f"{args.model} deploy form, batch {args.batch_size} at {args.img_size} px, {torch.get_num_threads()} "
          f"threads, {args.iters} rounds; ONNX Runtime {onnxruntime.__version__}, PyTorch {torch.__version__}; "
          f"ONNX Runtime vs PyTorch: relative difference {error:.1e}")
    print(f"{'variant':<33} {'ms/batch':>9} {'img/s':>8} {'ONNX Runtime speed-up':>22}")
    for name, t in zip(variants, times):
        median = statistics.median(t)
        print(f"{name:<33} {median * 1000:>9.1f} {args.batch_size / median:>8.2f} {paired_ratio(t, base):>21.2f}x")


if __name__ == "__main__":
    main()
