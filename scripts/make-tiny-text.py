#!/usr/bin/env python3
"""Generates the small data files the example configs use, deterministically:

  configs/data/tiny.txt  ~150 KB of English-like sentences from a small grammar (byte-level GPT)
  configs/data/blobs.csv 1200 samples of 16 features in 4 Gaussian blobs (MLP classification)

Run from anywhere: scripts/make-tiny-text.py [--out configs/data]. Same output on every run.
"""
import argparse
import os
import random

SUBJECTS = ["the cat", "a small dog", "the old man", "my sister", "the teacher", "a bird",
            "the farmer", "our neighbour", "the child", "a quiet student", "the baker",
            "the river", "the wind", "a tired traveller", "the king", "the little boat"]
VERBS_T = ["sees", "likes", "follows", "finds", "carries", "watches", "remembers", "paints",
           "builds", "opens", "hears", "visits"]
VERBS_I = ["sleeps", "sings", "waits", "runs", "laughs", "rests", "wanders", "listens",
           "dreams", "works"]
OBJECTS = ["the red door", "a warm loaf of bread", "the long road", "an old letter",
           "the green hill", "a wooden box", "the bright lamp", "the morning train",
           "a cup of tea", "the open window", "the garden", "a small stone"]
PLACES = ["in the village", "by the sea", "under the bridge", "near the market",
          "at the edge of the forest", "on the hill", "in the kitchen", "beside the river"]
TIMES = ["every morning", "at night", "in the spring", "after the rain", "before dinner",
         "on sundays", "all day long", "when the sun sets"]
ADVERBS = ["slowly", "quietly", "happily", "carefully", "again", "often", "sometimes"]
CONJ = ["and", "but", "because", "while", "so"]


def clause(rng):
    s = rng.choice(SUBJECTS)
    if rng.random() < 0.6:
        c = f"{s} {rng.choice(VERBS_T)} {rng.choice(OBJECTS)}"
    else:
        c = f"{s} {rng.choice(VERBS_I)}"
    if rng.random() < 0.3:
        c += " " + rng.choice(ADVERBS)
    if rng.random() < 0.4:
        c += " " + rng.choice(PLACES)
    if rng.random() < 0.3:
        c += " " + rng.choice(TIMES)
    return c


def sentence(rng):
    s = clause(rng)
    if rng.random() < 0.35:
        s += f" {rng.choice(CONJ)} {clause(rng)}"
    end = "?" if rng.random() < 0.08 else "."
    return s[0].upper() + s[1:] + end


def tiny_text(rng, target_bytes):
    out, size, para = [], 0, []
    while size < target_bytes:
        para.append(sentence(rng))
        if len(para) >= rng.randint(3, 7):
            text = " ".join(para) + "\n\n"
            out.append(text)
            size += len(text)
            para = []
    return "".join(out)


def blobs(rng, n, features, classes):
    centers = [[rng.uniform(-3, 3) for _ in range(features)] for _ in range(classes)]
    lines = [",".join([f"x{i}" for i in range(features)] + ["label"])]
    for k in range(n):
        label = k % classes
        row = [f"{rng.gauss(c, 1.0):.4f}" for c in centers[label]]
        lines.append(",".join(row + [str(label)]))
    return "\n".join(lines) + "\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "configs", "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tiny.txt"), "w") as f:
        f.write(tiny_text(random.Random(1234), 150_000))
    with open(os.path.join(args.out, "blobs.csv"), "w") as f:
        f.write(blobs(random.Random(5678), 1200, 16, 4))


if __name__ == "__main__":
    main()
