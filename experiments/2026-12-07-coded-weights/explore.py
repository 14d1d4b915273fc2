"""Exploration: how many bits does uniform quantization + our entropy coder need for a given fidelity?

Data-free variants of per-layer step allocation, with and without BN folding, measured on TRAINING images
(train5000_jpeg: agreement with the original), never on test images.
"""
import sys, time, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from nerncompress.checkpoint import load_checkpoint
from nerncompress.models import resolve_arch, build_model
from nerncompress.data import load_data, preset_stats
from nerncompress.evaluation import evaluate
from nerncompress.layers import following_batchnorms
from nerncompress import entropy

torch.set_num_threads(2)
DATA = Path("/work/shared/data")
name = sys.argv[1] if len(sys.argv) > 1 else "resnet56-4bfd9763.th"
sd = load_checkpoint(DATA / "models" / name)
spec = resolve_arch(None, sd)
model = build_model(spec, sd)
train = load_data(str(DATA / "cifar10/train5000_jpeg.npz"), split="train")
mean, std = preset_stats(spec.preset)
ref = evaluate(model, train, mean=mean, std=std, device="cpu")
pairs = following_batchnorms(model)
fp32 = sum(v.numel() * 4 for v in sd.values())

def fold(sd):
    out = dict(sd)
    for conv, bn in pairs.items():
        g, b, m, v = (sd[f"{bn}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        s = g / torch.sqrt(v + 1e-5)
        out[conv] = sd[conv] * s.view(-1, 1, 1, 1)
        out[f"{bn}.weight"] = torch.ones_like(g)
        out[f"{bn}.bias"] = b - m * s
        out[f"{bn}.running_mean"] = torch.zeros_like(m)
        out[f"{bn}.running_var"] = torch.ones_like(v) - 1e-5
    return out

def weights_of(sd):
    return [k for k, v in sd.items() if k.endswith("weight") and v.dim() in (2, 4)]

def plane_contexts(q):
    """context of each value: bucket of the sum of |q| of the values before it in its kernel (raster order)."""
    if q.ndim != 4 or q.shape[2] * q.shape[3] == 1:
        return None
    k = q.reshape(q.shape[0] * q.shape[1], -1)
    before = np.cumsum(np.abs(k), axis=1) - np.abs(k)
    ctx = np.minimum(before, 3)  # 0,1,2,3+
    pos_first = np.zeros_like(ctx); pos_first[:, 0] = 1
    ctx = np.where(pos_first == 1, 4, ctx)
    return ctx.reshape(-1)

def code_bits(sd_q, use_ctx):
    bits = 0.0
    for k, (step, q) in sd_q.items():
        ctx = plane_contexts(q) if use_ctx else None
        bits += entropy.estimate_bits(q.reshape(-1), ctx, 5 if ctx is not None else 1) + 32
    return bits

def run(folded, c, mode):
    base = fold(sd) if folded else dict(sd)
    keys = weights_of(base)
    q_all, out = {}, dict(base)
    for k in keys:
        w = base[k].float()
        step = c * float(w.std()) if mode == "relative" else c
        q = torch.round(w / step)
        q_all[k] = (step, q.numpy().astype(np.int64))
        out[k] = q * step
    bits_plain = code_bits(q_all, False)
    bits_ctx = code_bits(q_all, True)
    # the other tensors: BN / biases. Folded: only BN bias matters (quantize finely); else fp16-ish ~ 11 bits each
    other = [k for k in base if k not in keys and not k.endswith("num_batches_tracked")]
    other_bits = 0.0
    for k in other:
        v = base[k].float()
        if folded and (k.endswith("running_mean") or k.endswith("running_var") or (k.endswith(".weight") and torch.all(v == 1))):
            other_bits += 16  # constant, a few bytes
            continue
        step = max(float(v.abs().max()), 1e-8) / 2048
        q = torch.round(v / step)
        other_bits += entropy.estimate_bits(q.numpy().astype(np.int64).reshape(-1)) + 32
        out[k] = q * step
    m2 = build_model(spec, out)
    res = evaluate(m2, train, mean=mean, std=std, device="cpu")
    return {"folded": folded, "mode": mode, "c": c, "ratio_plain": (bits_plain + other_bits) / 8 / fp32,
            "ratio_ctx": (bits_ctx + other_bits) / 8 / fp32, "other_ratio": other_bits / 8 / fp32,
            "agreement": res.agreement(ref)}

for folded in (False, True):
    for mode, cs in (("relative", [0.3, 0.5, 0.7, 0.9]), ("absolute", [0.004, 0.008, 0.012, 0.016, 0.024])):
        for c in cs:
            t = time.time()
            r = run(folded, c, mode)
            r["seconds"] = round(time.time() - t, 1)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
