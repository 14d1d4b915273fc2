import math, sys, numpy as np, torch
from nerncompress.checkpoint import load_checkpoint
from nerncompress.models import resolve_arch, build_model
from nerncompress.coding.steps import simplify_batchnorms, coded_keys, batchnorm_sensitivity, layer_steps, quantize_state
from nerncompress.codes import plane_order
from nerncompress import entropy

def adaptive_bits(sym, ctx, nctx):
    # sequential KT-like estimate with per-context counts (alpha=0.5), symbols offset
    sym = sym - sym.min()
    K = int(sym.max()) + 1
    counts = np.full((nctx, K), 0.5); tot = np.full(nctx, 0.5 * K)
    bits = 0.0
    for s, c in zip(sym.tolist(), ctx.tolist()):
        bits -= math.log2(counts[c, s] / tot[c]); counts[c, s] += 1; tot[c] += 1
    return bits

for name in sys.argv[1:]:
    path = f"../shared/data/models/{name}"
    sd = load_checkpoint(path) if False else None
    import nerncompress
    obj = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    spec = resolve_arch(None, sd)
    model = build_model(spec, sd).eval()
    base = simplify_batchnorms(model, sd)
    weights, fine = coded_keys(base)
    sens = batchnorm_sensitivity(model, sd, weights)
    for c in (0.024, 0.045):
        steps = layer_steps(c, weights, sens, {k: base[k].numel() for k in weights})
        codes = quantize_state(base, steps, fine, 0.0)
        tot = {"ours": 0, "adapt0": 0, "prev": 0, "prev+kern": 0, "filter": 0}
        for k in weights:
            q = codes[k].ints.numpy().astype(np.int64)
            flat = plane_order(q)
            tot["ours"] += len(entropy.encode_ints(flat)) * 8
            a = np.abs(flat)
            tot["adapt0"] += adaptive_bits(flat, np.zeros_like(flat), 1)
            prev = np.concatenate([[0], a[:-1]])
            tot["prev"] += adaptive_bits(flat, np.minimum(prev, 2), 3)
            if q.ndim == 4 and q.shape[2] * q.shape[3] > 1:
                nk = q.shape[0] * q.shape[1]
                kp = np.concatenate([np.zeros(nk, np.int64), a[:-nk]])
            else:
                kp = np.zeros_like(a)
            tot["prev+kern"] += adaptive_bits(flat, np.minimum(prev, 2) * 3 + np.minimum(kp, 2), 9)
            # context: sum |.| of the filter's previous plane+prev
            tot["filter"] += adaptive_bits(flat, np.minimum(prev + kp, 4), 5)
        print(name, c, {k: round(v / 8) for k, v in tot.items()}, flush=True)
