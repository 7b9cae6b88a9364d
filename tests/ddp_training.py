"""A few steps of training a small CARAFEPack model, alone or as one DDP rank.

    python tests/ddp_training.py --rank R --world W --backend gloo|nccl \
        --device cpu|cuda --init file:///tmp/store --out state_R.pt

Each of W ranks trains on its 1/W of the batch; DistributedDataParallel averages
the gradients, so the parameters must end up as one process training on the
whole batch. On CUDA every rank runs on its own device (cuda:R, or cuda:0 for
all ranks when there is a single GPU) and on a side stream, and records the
device and stream of every kernel launch, to show they are the rank's own.
"""

from __future__ import annotations

import argparse

import torch

import carafe_cupy
from carafe_cupy._runtime import launch as _launch

BATCH, STEPS, LEARNING_RATE = 4, 3, 0.5


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        carafe_cupy.CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=4),
        torch.nn.Conv2d(4, 1, 3, padding=1),
    )
    torch.nn.init.normal_(model[1].content_encoder.weight, std=0.3)
    return model.double()


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, 3, 5, 6, dtype=torch.float64, generator=generator)
    targets = torch.randn(BATCH, 1, 10, 12, dtype=torch.float64, generator=generator)
    return inputs, targets


def train(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()


def single_process_state() -> dict[str, torch.Tensor]:
    model = make_model()
    train(model, *make_batch())
    return model.state_dict()


def _record_launches(launches: list) -> None:
    real_launch = _launch.launch

    def recording(kernel_name, grid, block, args, shared_mem, device, stream, *rest):
        launches.append((device, stream))
        return real_launch(kernel_name, grid, block, args, shared_mem, device, stream, *rest)

    _launch.launch = recording


def run_rank(rank: int, world: int, backend: str, device_type: str, init: str) -> dict:
    torch.distributed.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        inputs, targets = make_batch()
        share = BATCH // world
        inputs, targets = (t[rank * share : (rank + 1) * share] for t in (inputs, targets))
        model = make_model()
        launches: list = []
        if device_type == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
            model, inputs, targets = model.to(device), inputs.to(device), targets.to(device)
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
            _record_launches(launches)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                train(ddp, inputs, targets)
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            expected = {(device.index, stream.cuda_stream)}
            if not launches or set(launches) != expected:
                raise AssertionError(f"launches on {set(launches)}, expected {expected}")
        else:
            train(torch.nn.parallel.DistributedDataParallel(model), inputs, targets)
        # No rank tears its group down while another still talks to it: gloo
        # aborts the process ("terminate called without an active exception").
        torch.distributed.barrier()
        return {name: value.cpu() for name, value in model.state_dict().items()}
    finally:
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()
    state = run_rank(options.rank, options.world, options.backend, options.device, options.init)
    torch.save(state, options.out)


if __name__ == "__main__":
    main()
