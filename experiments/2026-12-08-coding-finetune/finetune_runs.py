"""Fine-tuning experiments at one coarseness: schedule and length; held-out KL/agreement, JPEG agreement, bytes."""
import json, sys, time, math, os
from pathlib import Path
import torch
ROOT = Path("/work/main"); sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import load_test_sets, save_fp32_reference
from run import Evaluator
from codec import CHECKPOINTS, nncodec_ratio_at, training_data
from nerncompress import CodeConfig, load_checkpoint
from nerncompress.coding.search import _Coding, _with_codes
from nerncompress.coding.finetune import finetune
from nerncompress.artifact import save_artifact
from nerncompress.data import preset_stats
from nerncompress.losses import kd_loss
from nerncompress.models import resolve_arch
from nerncompress.nern import expand_state_dict
from nerncompress.progress import silent
from torch.func import functional_call
torch.set_num_threads(int(os.environ.get("THREADS", 2)))
data_dir = ROOT.parent / "shared" / "data"
nn_rows = json.loads((ROOT / "benchmarks/results/nncodec.json").read_text())["rows"]
model = sys.argv[1]; c = float(sys.argv[2]); runs = sys.argv[3:]   # each run: "iters:key=val,key=val"
lossless, jpeg = load_test_sets(data_dir, quick=False)
sd = load_checkpoint(data_dir / "models" / CHECKPOINTS[model]); arch = resolve_arch(None, sd)
mean, std = preset_stats(arch.preset); ev = Evaluator(arch, lossless, jpeg, mean, std); ev(sd)
ref = save_fp32_reference(sd, Path(f"/tmp/exp/{model}.fp32.safetensors"))
data = training_data(data_dir)
for run in runs:
    iters, _, opts = run.partition(":")
    kw = {k: type(getattr(CodeConfig(), k))(v) if not isinstance(getattr(CodeConfig(), k), bool) else v == "1"
          for k, v in (o.split("=") for o in opts.split(",") if o)}
    config = CodeConfig(stage_iters=int(iters), **kw)
    job = _Coding(arch, sd, config, data, torch.device("cpu"), silent, None)
    latents = job.initial_latents()
    started = time.perf_counter()
    if int(iters):
        finetune(job.student, job.teacher, latents, job.steps(c), job.data, config, spec=arch, iters=int(iters),
                 generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    seconds = time.perf_counter() - started
    found = job.candidate(c, {**job.base, **latents}, int(iters))
    nern = _with_codes(found.extra["template"], found.codes)
    path = Path(f"/tmp/exp/{model}.ft.nern"); save_artifact(nern, path)
    state = expand_state_dict(nern, device="cpu")
    # held-out KL
    with torch.no_grad():
        t = job.teacher(job.holdout.x); s = functional_call(job.student, {k: v for k, v in state.items()}, (job.holdout.x,), strict=False)
        kl = float(kd_loss(s, t))
    f = ev(state); ratio = path.stat().st_size / ref
    x = nncodec_ratio_at(nn_rows, model, f["agreement_jpeg"])
    print(json.dumps({"model": model, "c": c, "run": run, "s": round(seconds), "ratio%": round(100 * ratio, 2),
                      "holdout_kl": round(kl, 4), "holdout_agree": found.agreement, "jpeg_agree": f["agreement_jpeg"],
                      "top1": f["top1_lossless"], "x": x and round(ratio / x, 3)}), flush=True)
