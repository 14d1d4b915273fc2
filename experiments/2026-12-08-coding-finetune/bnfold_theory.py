import math, sys, numpy as np, torch
from nerncompress.models import resolve_arch, build_model
from nerncompress.coding.steps import simplify_batchnorms
from nerncompress.layers import following_batchnorms
for name in sys.argv[1:]:
    obj = torch.load(f"../shared/data/models/{name}", weights_only=True, map_location="cpu")["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    spec = resolve_arch(None, sd); model = build_model(spec, sd).eval()
    base = simplify_batchnorms(model, sd)
    gain = n = 0
    for conv, bn in following_batchnorms(model).items():
        s = base[f"{bn}.weight"].double().abs()
        w = base[conv]; per = w[0].numel()
        g = 0.5 * math.log2(float((s**2).mean()) / math.exp(float(torch.log(s**2).mean())))
        gain += g * w.numel(); n += w.numel()
    print(name, "bits/weight saved at equal weighted distortion:", gain / n)
