"""Data-free fine-tuning on noise images: does it move the data-free curve?"""
import json, sys, time, os
from pathlib import Path
import torch
ROOT = Path("/work/main"); sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import load_test_sets, save_fp32_reference
from run import Evaluator
from codec import CHECKPOINTS, nncodec_ratio_at
from nerncompress import CodeConfig, load_checkpoint
from nerncompress.coding.search import _Coding, _with_codes
from nerncompress.coding.finetune import finetune
from nerncompress.artifact import save_artifact
from nerncompress.data import preset_stats
from nerncompress.models import resolve_arch
from nerncompress.nern import expand_state_dict
from nerncompress.progress import silent
torch.set_num_threads(1)
data_dir = ROOT.parent / "shared" / "data"
nn_rows = json.loads((ROOT / "benchmarks/results/nncodec.json").read_text())["rows"]
model = sys.argv[1]; c = float(sys.argv[2]); iters_list = [int(a) for a in sys.argv[3:]]
lossless, jpeg = load_test_sets(data_dir, quick=False)
sd = load_checkpoint(data_dir / "models" / CHECKPOINTS[model]); arch = resolve_arch(None, sd)
mean, std = preset_stats(arch.preset); ev = Evaluator(arch, lossless, jpeg, mean, std); ev(sd)
ref = save_fp32_reference(sd, Path(f"/tmp/exp/{model}.fp32.safetensors"))
for iters in iters_list:
    config = CodeConfig(allocation="batchnorm", mix="none")
    job = _Coding(arch, sd, config, None, torch.device("cpu"), silent, None)
    latents = job.initial_latents(); t = time.perf_counter()
    if iters:
        finetune(job.student, job.teacher, latents, job.steps(c), None, config, spec=arch, iters=iters,
                 generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    s = time.perf_counter() - t
    found = job.candidate(c, {**job.base, **latents}, iters)
    nern = _with_codes(found.extra["template"], found.codes); path = Path(f"/tmp/exp/{model}.noise.nern"); save_artifact(nern, path)
    f = ev(expand_state_dict(nern, device="cpu")); ratio = path.stat().st_size / ref
    x = nncodec_ratio_at(nn_rows, model, f["agreement_jpeg"])
    print(json.dumps({"model": model, "c": c, "iters": iters, "s": round(s), "ratio%": round(100*ratio, 2),
                      "jpeg_agree": f["agreement_jpeg"], "top1": f["top1_lossless"], "x": x and round(ratio/x, 3)}), flush=True)
