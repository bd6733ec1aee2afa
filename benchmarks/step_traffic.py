"""One training step of the paper's configuration on CUDA, eager against compiled: milliseconds per
step and, under Nsight Compute, the DRAM bytes it moves.

`python -m benchmarks.step_traffic --k 64` prints ms/step of the eager step, the eager step replayed
as a CUDA graph (the engine's capture), the step compiled by TorchInductor (fused elementwise work,
`torch.compile(fullgraph=True)` of the engine's step body) and that compiled step replayed as a CUDA
graph. `--profile eager|compiled` instead runs that one variant's step once between
cudaProfilerStart and cudaProfilerStop, for
`ncu --profile-from-start off --metrics dram__bytes_read.sum,dram__bytes_write.sum --csv`, whose
per-kernel rows benchmarks/gpu_check.sh sums: the bytes the step really moves (caches included),
where engine.op_count can only add up the tensors each eager op reads and writes.

`--count-bytes` runs on any device, the CPU included: the bytes each kernel of the compiled step
reads and writes as TorchInductor's scheduler counts them (its own estimate, the one its
`inductor_metrics` log prints: a fused kernel's inputs and outputs, an intermediate kept in
registers counting nothing), beside engine.op_count's count of the eager step. Both count tensors,
not cache lines, so the pair says what fusion saves before a GPU measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import time
from pathlib import Path

import torch

from benchmarks import engine as engine_benchmark
from benchmarks.engine import SPEC
from engine.device import configure_tf32
from engine.op_count import OpCounter
from engine.spec import PRECISIONS
from engine.train import Ensemble


def _ensemble_past_warmup(k: int, device: torch.device, precision: str = "float32") -> Ensemble:
    ensemble = engine_benchmark._ensemble(k, device, precision=precision)
    for member in ensemble.members:  # past the warm-up: the step's shape from now on
        member.step = SPEC.optimizer.warmup_steps
    ensemble._set_hyperparameters()
    return ensemble


def _ms_per_step(step, steps: int = 20) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def _graphed(step):
    """The step replayed as one CUDA graph (captured after warm-up on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def variants(ensemble: Ensemble) -> dict:
    layout = ensemble._batch_layout()
    compiled_body = torch.compile(ensemble._step_body, fullgraph=True)
    eager = lambda: ensemble._step_body(layout)  # noqa: E731
    compiled = lambda: compiled_body(layout, functional=True)  # noqa: E731
    return {"eager": eager, "compiled": compiled}


def _template_gemms() -> object:
    """Inductor's choices, except that a GEMM takes a generated template over aten's kernel wherever
    one exists (whatever their timings): only a template's GEMM takes its pointwise epilogue (the
    ReLU, its backward's mask) into the same kernel, which is what this count asks about."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.select_algorithm import ExternKernelCaller

    class TemplateGemms(InductorChoices):
        def override_best_choice(self, best_choice, timings):  # type: ignore[no-untyped-def]
            templates = [choice for choice in timings if not isinstance(choice, ExternKernelCaller)]
            return min(templates, key=timings.__getitem__) if templates else best_choice

    return TemplateGemms()


def compiled_step_bytes(ensemble: Ensemble, gemm_templates: bool = False) -> tuple[int, int]:
    """(bytes, kernels) of one compiled step as TorchInductor's scheduler counts them while it
    compiles (caches off, so that it compiles rather than loads an earlier build); with
    `gemm_templates`, its GEMMs generated (CPP on the CPU, Triton on CUDA) wherever it can."""
    from torch._inductor import config as inductor_config
    from torch._inductor import metrics
    from torch._inductor.virtualized import V

    # Inductor counts bytes only when this log takes INFO; kept quiet, the metric is read below.
    metrics_log = logging.getLogger("torch._inductor.compile_fx.__inductor_metrics")
    metrics_log.setLevel(logging.INFO)
    metrics_log.propagate = False
    metrics.reset()
    torch._dynamo.reset()  # Dynamo keeps an earlier compilation of the step's code and would reuse it
    templates, choices = {}, contextlib.nullcontext()
    if gemm_templates:
        backends = "CPP,ATEN" if ensemble.device.type == "cpu" else "TRITON,ATEN"
        templates = dict(max_autotune=True, max_autotune_gemm_backends=backends, benchmark_epilogue_fusion=False)
        # Installed for this compilation: Inductor builds its default choices once per thread.
        choices = V.set_choices_handler(_template_gemms())
    with inductor_config.patch(force_disable_caches=True, **templates), choices:
        variants(ensemble)["compiled"]()
    return metrics.num_bytes_accessed, metrics.generated_kernel_count


def print_byte_counts(k: int, device: torch.device, gemm_templates: bool, precision: str) -> None:
    ensemble = _ensemble_past_warmup(k, device, precision)
    eager = variants(ensemble)["eager"]
    eager()  # the first step of a layout builds it
    with OpCounter() as counter:
        eager()
    print(
        f"{precision}, K={k}: eager step    {counter.ops:5d} ops      {counter.bytes / k / 1e6:7.1f} MB per member-step (engine.op_count)"
    )
    start = time.perf_counter()
    compiled_bytes, kernels = compiled_step_bytes(ensemble)
    print(
        f"{precision}, K={k}: compiled step {kernels:5d} kernels  {compiled_bytes / k / 1e6:7.1f} MB per member-step "
        f"(TorchInductor's count; compiled in {time.perf_counter() - start:.0f} s on {device.type})"
    )
    if gemm_templates:
        compiled_bytes, kernels = compiled_step_bytes(ensemble, gemm_templates=True)
        print(
            f"{precision}, K={k}: GEMM templates {kernels:4d} kernels  {compiled_bytes / k / 1e6:7.1f} MB per member-step (epilogues fused)"
        )


def sum_ncu_csv(path: Path, k: int) -> None:
    """Prints the kernels and DRAM bytes of an `ncu --csv --print-units base` log of one step."""
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    kernels, total = set(), 0.0
    for row in csv.DictReader(lines[header:]):
        if row["Metric Name"] in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            kernels.add(row["ID"])
            total += float(row["Metric Value"].replace(",", ""))
    print(
        f"{path.name}: {len(kernels)} kernels, {total / 1e9:.3f} GB of DRAM traffic a step, {total / k / 1e6:.1f} MB per member-step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--profile", choices=["eager", "compiled"])
    parser.add_argument("--sum-ncu", type=Path, help="sum the DRAM bytes of this ncu CSV log and exit")
    parser.add_argument("--count-bytes", action="store_true", help="the eager and compiled step's bytes as counted, and exit")
    parser.add_argument("--device", default="cuda", help="the device of --count-bytes (cpu works)")
    parser.add_argument(
        "--gemm-templates", action="store_true", help="--count-bytes also with generated GEMMs and their epilogues fused"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="the runs' RunSpec.precision")
    args = parser.parse_args()
    if args.sum_ncu:
        sum_ncu_csv(args.sum_ncu, args.k)
        return
    if args.count_bytes:
        print_byte_counts(args.k, torch.device(args.device), args.gemm_templates, args.precision)
        return
    device = torch.device("cuda")
    configure_tf32(True)
    ensemble = _ensemble_past_warmup(args.k, device, args.precision)
    steps = variants(ensemble)
    if args.profile:
        step = steps[args.profile]
        for _ in range(3):  # compiles, warms the allocator
            step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        return
    start = time.perf_counter()
    steps["compiled"]()
    print(f"K={args.k}: compiling the step took {time.perf_counter() - start:.1f} s")
    for name, step in steps.items():
        ms = _ms_per_step(step)
        print(f"K={args.k}: {name:9s} {ms:8.3f} ms/step   {args.k / ms * 1e3:10.1f} run-steps/s")
        graphed_ms = _ms_per_step(_graphed(step))
        print(f"K={args.k}: {name:9s} as a CUDA graph {graphed_ms:8.3f} ms/step   {args.k / graphed_ms * 1e3:10.1f} run-steps/s")


if __name__ == "__main__":
    main()
