#!/usr/bin/env python3
"""Baseline for `scripts/bench.sh resnet`: times ResNet training steps in PyTorch on the CPU with
the same model as ptrain's resnet family (torchvision's BasicBlock ResNet, generalised to any
widths/blocks/stem exactly as lib/models/resnet builds it), the same batch, SGD with momentum,
and the same number of threads. Prints ms/step and images/s.
Usage: torch_resnet_step.py --in-channels 1 --size 28 --classes 10 --widths 16,32,64
       --blocks 1,1,1 --stem cifar --batch 64 --threads 1 [--steps 10] [--warmup 2]
Exits 3 when PyTorch is missing."""
import argparse
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("torch_resnet_step: PyTorch is not installed", file=sys.stderr)
    sys.exit(3)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    def __init__(self, in_channels, classes, widths, blocks, stem):
        super().__init__()
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, w0, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, w0, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w0)
        layers, cin = [], w0
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(n):
                stage.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--blocks", default="2,2,2,2")
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    widths = [int(v) for v in a.widths.split(",")]
    blocks = [int(v) for v in a.blocks.split(",")]
    model = ResNet(a.in_channels, a.classes, widths, blocks, a.stem)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, a.in_channels, a.size, a.size)
    y = torch.randint(0, a.classes, (a.batch,))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    ms = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(ms)
    print(f"RESULT framework=pytorch-{torch.__version__} threads={a.threads} batch={a.batch} "
          f"ms_per_step={med:.2f} images_per_s={a.batch / med * 1e3:.1f}")


if __name__ == "__main__":
    main()
