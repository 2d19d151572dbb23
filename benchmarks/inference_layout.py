"""CPU inference of the BN-folded model (what predict and eval run) in channels_last against contiguous
memory, in one process, alternating.

    python3 benchmarks/inference_layout.py [--models resnet50 resnet18] [--batch 32] [--img-size 224] [--rounds 15]

predict and eval feed contiguous batches; session 6 saw channels_last ahead by 0.97-1.32x in blocks that did
not alternate the layouts. Prints one JSON line per model: median img/s of each layout and their ratio,
and the share of rounds channels_last won.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

import resnets
from resnets.inference.fold import fold_batchnorm

from fold_batchnorm import images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for name in args.models:
        folded = fold_batchnorm(resnets.create_model(name).eval())  # contiguous weights, as the fold writes them
        layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
        models = {"contiguous": folded, "channels_last": copy.deepcopy(folded).to(memory_format=torch.channels_last)}
        x = torch.randn(args.batch, 3, args.img_size, args.img_size)
        inputs = {key: x.contiguous(memory_format=layout) for key, layout in layouts.items()}
        # predict and eval hand over contiguous batches: the channels_last model is also timed on those
        runs = {"contiguous": ("contiguous", "contiguous"), "channels_last": ("channels_last", "channels_last"),
                "channels_last_model": ("channels_last", "contiguous")}
        rates: dict[str, list[float]] = {key: [] for key in runs}
        with torch.inference_mode():
            torch.testing.assert_close(models["channels_last"](inputs["channels_last"]),
                                       models["contiguous"](inputs["contiguous"]), rtol=1e-4, atol=1e-4)
            for _ in range(args.rounds):
                for key, (model, batch) in runs.items():
                    rates[key].append(images_per_second(models[model], inputs[batch], args.steps))
        medians = {key: statistics.median(v) for key, v in rates.items()}
        wins = sum(c > p for c, p in zip(rates["channels_last"], rates["contiguous"])) / args.rounds
        print(json.dumps(dict(model=name, device="cpu", torch=torch.__version__, batch=args.batch,
                              img_size=args.img_size, threads=torch.get_num_threads(), rounds=args.rounds,
                              contiguous_img_s=round(medians["contiguous"], 1),
                              channels_last_img_s=round(medians["channels_last"], 1),
                              channels_last_model_contiguous_batch_img_s=round(medians["channels_last_model"], 1),
                              channels_last_over_contiguous=round(medians["channels_last"] / medians["contiguous"], 3),
                              channels_last_won=round(wins, 2))), flush=True)


if __name__ == "__main__":
    main()
