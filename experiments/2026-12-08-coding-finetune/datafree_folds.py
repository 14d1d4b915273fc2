"""Data-free curve: fold modes side by side, vs NNCodec."""
import json, sys, time
from pathlib import Path
import torch
ROOT = Path("/work/main"); sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import load_test_sets, save_fp32_reference
from run import Evaluator
from codec import CHECKPOINTS, nncodec_ratio_at
from nerncompress import CodeConfig, code_checkpoint, load_checkpoint
from nerncompress.artifact import save_artifact
from nerncompress.data import preset_stats
from nerncompress.models import resolve_arch
from nerncompress.nern import expand_state_dict
torch.set_num_threads(2)
data_dir = ROOT.parent / "shared" / "data"
nn_rows = json.loads((ROOT / "benchmarks/results/nncodec.json").read_text())
nn_rows = nn_rows["rows"] if isinstance(nn_rows, dict) else nn_rows
models = sys.argv[1].split(","); folds = sys.argv[2].split(","); steps = [float(s) for s in sys.argv[3].split(",")]
lossless, jpeg = load_test_sets(data_dir, quick=False)
for model in models:
    sd = load_checkpoint(data_dir / "models" / CHECKPOINTS[model]); arch = resolve_arch(None, sd)
    mean, std = preset_stats(arch.preset); ev = Evaluator(arch, lossless, jpeg, mean, std)
    ref = save_fp32_reference(sd, Path(f"/tmp/exp/{model}.fp32.safetensors")); print(ev(sd)["agreement_jpeg"])
    for fold in folds:
        for step in steps:
            nern, _ = code_checkpoint(sd, CodeConfig(step=step, allocation="batchnorm", fold_batchnorm=fold), arch=arch, device="cpu")
            path = Path(f"/tmp/exp/{model}.{fold}.{step}.nern"); save_artifact(nern, path)
            f = ev(expand_state_dict(nern, device="cpu")); ratio = path.stat().st_size / ref
            x = nncodec_ratio_at(nn_rows, model, f["agreement_jpeg"])
            print(model, fold, step, f"{100*ratio:.2f}%", f"{f['agreement_jpeg']:.2f}", "x=" + (f"{ratio/x:.3f}" if x else "-"), flush=True)
