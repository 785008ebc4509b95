#!/usr/bin/env python3
"""A tiny PyTorch DDP script for configs/torch-command.yaml: fits y = 3x + 1 with a linear model.

It reads the torchrun environment that ptrain sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) through init_process_group("env://"), so it runs unchanged under torchrun too.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    args = ap.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(1, 1).to(device), device_ids=[local_rank] if use_cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank sees different samples

    for epoch in range(args.epochs):
        for _ in range(args.steps_per_epoch):
            x = torch.randn(32, 1, generator=gen).to(device)
            y = 3 * x + 1
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if rank == 0:
            w, b = model.module.weight.item(), model.module.bias.item()
            print(f"epoch {epoch}: loss {loss.item():.4f} w {w:.3f} b {b:.3f} (world {world})",
                  flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
