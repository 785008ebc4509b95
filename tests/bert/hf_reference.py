#!/usr/bin/env python3
"""An independent check of the bert family against Hugging Face BertForMaskedLM's equations.

Runs a tiny bert job with `ptrain run` (tensor 2, so the checkpoint is gathered from two
shards), reads the checkpoint saved after step 1 by tensor name (pure Python: no numpy, no
torch), rebuilds step 2's batch from the text and the documented masking function, and
computes the masked-LM loss the way transformers' modeling_bert does (embeddings LayerNorm of
word + position + token_type[0]; per layer self-attention, BertSelfOutput LayerNorm(dense(ctx)
+ x), BertIntermediate erf GELU, BertOutput LayerNorm(dense(h) + x); the head's transform dense,
GELU, LayerNorm and the decoder tied to the word embeddings plus cls.predictions.bias; mean
cross-entropy over the masked positions). It must equal the loss ptrain reports for step 2.
Usage: hf_reference.py PTRAIN_BINARY SOURCE_DIR
"""
import array, json, math, os, struct, subprocess, sys, tempfile

binary, source = sys.argv[1], sys.argv[2]
L, H, D, T, V, G, SEED, P = 2, 2, 16, 8, 257, 4, 3, 0.3
M64 = (1 << 64) - 1


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mask(e, w, j, tok):
    x = splitmix64((((e << 40) + w * T + j) & M64) ^ splitmix64(SEED))
    if (x >> 40) * 2.0**-24 >= P:
        return tok, -1
    y = splitmix64(x)
    r = (y >> 40) * 2.0**-24
    if r < 0.8:
        return V - 1, tok
    if r < 0.9:
        return splitmix64(y) % V, tok
    return tok, tok


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        b, e = info["data_offsets"]
        a = array.array("f")
        a.frombytes(raw[8 + n + b:8 + n + e])
        out[name] = (info["shape"], list(a))
    return out


def linear(x, w, b, out_dim):  # nn.Linear: x [N][in] . w[out][in]^T + b
    rows = []
    for v in x:
        rows.append([sum(w[o * len(v) + i] * v[i] for i in range(len(v))) + (b[o] if b else 0.0)
                     for o in range(out_dim)])
    return rows


def layernorm(x, w, b, eps=1e-12):
    out = []
    for v in x:
        m = sum(v) / len(v)
        var = sum((a - m) ** 2 for a in v) / len(v)
        r = 1.0 / math.sqrt(var + eps)
        out.append([(a - m) * r * w[i] + b[i] for i, a in enumerate(v)])
    return out


def gelu(x):
    return [[0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0))) for a in v] for v in x]


def add(x, y):
    return [[a + b for a, b in zip(u, v)] for u, v in zip(x, y)]


def encoder_layer(x, p, i):
    pre = f"bert.encoder.layer.{i}."
    g = lambda n: p[pre + n][1]
    q, k, v = (linear(x, g(f"attention.self.{n}.weight"), g(f"attention.self.{n}.bias"), D)
               for n in ("query", "key", "value"))
    hd = D // H
    ctx = [[0.0] * D for _ in x]
    for h in range(H):
        for a in range(T):
            s = [sum(q[a][h * hd + c] * k[bb][h * hd + c] for c in range(hd)) / math.sqrt(hd)
                 for bb in range(T)]
            mx = max(s)
            e = [math.exp(z - mx) for z in s]
            tot = sum(e)
            for c in range(hd):
                ctx[a][h * hd + c] = sum(e[bb] / tot * v[bb][h * hd + c] for bb in range(T))
    att = linear(ctx, g("attention.output.dense.weight"), g("attention.output.dense.bias"), D)
    x = layernorm(add(att, x), g("attention.output.LayerNorm.weight"),
                  g("attention.output.LayerNorm.bias"))
    inter = gelu(linear(x, g("intermediate.dense.weight"), g("intermediate.dense.bias"), 4 * D))
    out = linear(inter, g("output.dense.weight"), g("output.dense.bias"), D)
    return layernorm(add(out, x), g("output.LayerNorm.weight"), g("output.LayerNorm.bias"))


def mlm_loss_sum(tokens, labels, p):
    word = p["bert.embeddings.word_embeddings.weight"][1]
    pos = p["bert.embeddings.position_embeddings.weight"][1]
    typ = p["bert.embeddings.token_type_embeddings.weight"][1]
    x = [[word[t * D + c] + pos[j * D + c] + typ[c] for c in range(D)] for j, t in enumerate(tokens)]
    x = layernorm(x, p["bert.embeddings.LayerNorm.weight"][1], p["bert.embeddings.LayerNorm.bias"][1])
    for i in range(L):
        x = encoder_layer(x, p, i)
    h = gelu(linear(x, p["cls.predictions.transform.dense.weight"][1],
                    p["cls.predictions.transform.dense.bias"][1], D))
    h = layernorm(h, p["cls.predictions.transform.LayerNorm.weight"][1],
                  p["cls.predictions.transform.LayerNorm.bias"][1])
    logits = linear(h, word, p["cls.predictions.bias"][1], V)  # the decoder is tied
    total, count = 0.0, 0
    for row, y in zip(logits, labels):
        if y < 0:
            continue
        mx = max(row)
        total += mx + math.log(sum(math.exp(z - mx) for z in row)) - row[y]
        count += 1
    return total, count


with tempfile.TemporaryDirectory() as work:
    text = os.path.join(source, "configs", "data", "tiny.txt")
    spec = os.path.join(work, "job.yaml")
    with open(spec, "w") as f:
        f.write(f"""name: hf-ref
nodes: {{procs_per_node: 2, device: cpu, threads_per_proc: 1}}
parallel: {{data: 1, tensor: 2}}
model: {{type: bert, layers: {L}, heads: {H}, dim: {D}, seq_len: {T}, vocab: {V}}}
data: {{type: text, path: {text}, batch_size: {G}, mask_prob: {P}}}
train: {{steps: 2, seed: {SEED}, optimizer: {{type: adamw, lr: 1.0e-2}}}}
checkpoint: {{every: 1, keep: 0, dir: {work}/ck}}
logging: {{dir: {work}/runs, console: none}}
""")
    subprocess.run([binary, "run", spec], check=True, stdout=subprocess.DEVNULL)
    run_dir = os.path.join(work, "runs", os.listdir(os.path.join(work, "runs"))[0])
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    reported = next(l["loss"] for l in lines if l["step"] == 2)
    ck = [f for f in os.listdir(os.path.join(work, "ck")) if f.startswith("step-1") and
          f.endswith(".safetensors") and "optim" not in f]
    params = read_safetensors(os.path.join(work, "ck", sorted(ck)[0]))
    assert params["bert.embeddings.word_embeddings.weight"][0] == [V, D]
    assert params["cls.predictions.bias"][0] == [V]
    assert params["bert.encoder.layer.0.intermediate.dense.weight"][0] == [4 * D, D]
    assert params["bert.encoder.layer.0.output.dense.weight"][0] == [D, 4 * D]
    data = open(text, "rb").read()
    windows = len(data) // T
    total, count = 0.0, 0
    step = 1  # the batch of step 2, trained with the weights saved after step 1
    for j in range(G):
        g = step * G + j
        e, w = g // windows, g % windows
        toks, labels = zip(*(mask(e, w, t, data[w * T + t]) for t in range(T)))
        s, c = mlm_loss_sum(list(toks), list(labels), params)
        total, count = total + s, count + c
    ours = total / max(count, 1)
    rel = abs(ours - reported) / abs(ours)
    print(f"HF-equation reference loss {ours:.7f}, ptrain (tensor 2) {reported:.7f}, "
          f"relative difference {rel:.2e} over {count} masked positions")
    sys.exit(0 if rel < 1e-5 else 1)
