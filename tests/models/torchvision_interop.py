#!/usr/bin/env python3
"""torchvision <-> ptrain weights for tests/models/resnet_test.cc (TorchvisionInterop).
  export OUT.safetensors IN.bin LOGITS.bin: torchvision resnet18(num_classes=10) with running
      statistics from a few training-mode batches, saved as safetensors as PyTorch holds it
      (num_batches_tracked I64, shape []); IN.bin: 4 random 3x32x32 images (float32); LOGITS.bin:
      its eval-mode logits on them.
  import CKPT.safetensors IN.bin LOGITS.bin: loads ptrain's checkpoint into resnet18 with
      strict=True and writes its eval-mode logits on IN.bin.
Exits 3 when torch or torchvision is missing. Reads and writes safetensors by hand (the format
is a JSON header and raw little-endian bytes), so the safetensors package is not needed."""
import json
import struct
import sys

try:
    import numpy as np
    import torch
    import torchvision
except ImportError as e:
    print(f"torchvision_interop: {e}", file=sys.stderr)
    sys.exit(3)

DTYPES = {"F32": (np.float32, torch.float32), "I64": (np.int64, torch.int64)}


def save(path, tensors):
    header, chunks, at = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().contiguous().numpy()
        code = "I64" if a.dtype == np.int64 else "F32"
        b = a.astype(DTYPES[code][0]).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        chunks.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=DTYPES[info["dtype"]][0])
        out[name] = torch.from_numpy(a.copy()).reshape(info["shape"])
    return out


def main():
    mode, model_path, in_path, logits_path = sys.argv[1:5]
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    if mode == "export":
        m.train()
        with torch.no_grad():
            for _ in range(3):
                m(torch.randn(8, 3, 32, 32) * 2 + 0.5)
        save(model_path, m.state_dict())
        x = torch.randn(4, 3, 32, 32)
        x.numpy().astype(np.float32).tofile(in_path)
    else:
        state = load(model_path)
        m.load_state_dict(state, strict=True)
        x = torch.from_numpy(np.fromfile(in_path, dtype=np.float32)).reshape(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        m(x).numpy().astype(np.float32).tofile(logits_path)


if __name__ == "__main__":
    main()
