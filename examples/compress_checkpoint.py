"""Compress a checkpoint with the Python API: fit, distill, quantize, expand, evaluate.

    python examples/compress_checkpoint.py ../shared/data/models/resnet20-12fca82f.th \
        --train ../shared/data/cifar10/train2000_lossless.npz --test ../shared/data/cifar10/test1000_lossless.npz

The same steps as `nerncompress fit`, `distill`, `quantize` and `expand`, written out as a script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nerncompress as nc
from nerncompress.compression import QuantizeConfig
from nerncompress.data import preset_stats


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--train", required=True, help="training images for distillation (.npz, CIFAR folder...)")
    parser.add_argument("--test", required=True, help="labelled test images")
    parser.add_argument("--hidden", type=int, default=180)
    parser.add_argument("--fit-iters", type=int, default=8000)
    parser.add_argument("--distill-iters", type=int, default=300)
    parser.add_argument("--qat-iters", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("compressed"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    state_dict = nc.load_checkpoint(args.checkpoint)  # weights_only=True; "module." prefixes removed
    original = nc.build_model(nc.detect_arch(state_dict), state_dict)

    nern = nc.fit(state_dict, nc.FitConfig(hidden=args.hidden, iters=args.fit_iters))  # phase 1: reconstruction
    nern = nc.distill(nern, original, nc.load_data(args.train, split="train"),  # phase 2: logits KD
                      nc.DistillConfig(iters=args.distill_iters))  # fmt: skip
    small = nc.compress(nern, QuantizeConfig(bits=8, qat_iters=args.qat_iters))  # learned int8 predictor
    nc.save_artifact(small, args.out / "model.nern")
    nc.export(small, args.out / "model.onnx")  # verified against PyTorch with onnxruntime
    nc.export(small, args.out / "model.safetensors")  # the original keys, loadable with plain torch

    test = nc.load_data(args.test, split="test")
    mean, std = preset_stats(nern.arch.preset)
    before = nc.evaluate(original, test, mean=mean, std=std)
    after = nc.evaluate(nc.expand_model(small), test, mean=mean, std=std)
    result = {
        "original_top1": before.top1,
        "compressed_top1": after.top1,
        "agreement": after.agreement(before),
        "nern_bytes": (args.out / "model.nern").stat().st_size,
    }
    print(result)
    return result


if __name__ == "__main__":
    main()
