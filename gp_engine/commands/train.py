"""`gp-engine train --data DIR --out model.pt`: train the diffusion U-Net on grain volumes."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train the diffusion model on grain volumes",
        description="Train the 3D U-Net (DDPM with ε, x₀ or v prediction on 32³ blocks) on grain volumes. Files named "
                    "seed1001..seed1018 train, seed1019+ validate (see --val). The checkpoint is written "
                    "periodically and at the end; --resume continues it exactly.")
    p.add_argument("--data", nargs="+", help="directory(ies) or volume files (.npz/.npy/.vti/SPPARKS dump)")
    p.add_argument("--out", required=True, help="checkpoint file to write (model.pt)")
    p.add_argument("--preset", choices=["tiny", "mini", "mini3", "small", "base"],
                   help="U-Net size: tiny 8/16, mini 16/32, mini3 16/32/64, small 32/64, base 64/128/256 "
                        "channels (default small)")
    p.add_argument("--steps", type=int, default=10_000, help="total optimizer steps (default 10000)")
    p.add_argument("--batch-size", type=int, default=32, help="blocks per step (default 32)")
    p.add_argument("--encoding", choices=["separable", "bits", "paper"],
                   help="block encoding (default separable): separable = K levels, bits = analog bits over "
                        "--bits channels, paper = the paper's spin values")
    p.add_argument("--bits", type=int, help="analog-bits channels for --encoding bits (default 4 = 16 codes)")
    p.add_argument("--colouring", metavar="{dsatur,spread}",  # checked by gp_engine.encoding.check_colouring
                   help="how grains get their colours in the training data: dsatur (fewest colours) or spread "
                        "(all 2^bits / K colours, same colours kept apart); default: the lineage's when resuming "
                        "or with --init-from (a switch changes only the data), dsatur for a new run")
    p.add_argument("--levels", type=int, help="separable encoding levels K (default: gp_engine.encoding.DEFAULT_LEVELS)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision (default: bf16 on CUDA and on CPUs with AMX bf16 tiles, else fp32; validation always fp32)")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate (default 2e-4 for a new run; a resumed run "
                                            "keeps its lineage's unless given)")
    p.add_argument("--cooldown-steps", type=int, metavar="N",
                   help="decay the learning rate linearly to 0 over the last N steps before --steps (cool a "
                        "branch of a lineage down before shipping it: copy the checkpoint, then --resume the copy)")
    p.add_argument("--loss", default="mse", choices=["mse", "l1"], help="loss on the target (default mse)")
    p.add_argument("--target", choices=["eps", "x0", "v"],
                   help="what the network predicts (default eps); the built ONNX graph always outputs ε")
    p.add_argument("--weighting", default="uniform", choices=["uniform", "min-snr"],
                   help="loss weighting over timesteps (default uniform; min-snr = Min-SNR-γ)")
    p.add_argument("--gamma", type=float, default=5.0, help="γ of Min-SNR-γ (default 5)")
    p.add_argument("--aux-ce", type=float, default=0.0,
                   help="analog bits: weight of an auxiliary cross-entropy on the predicted bits (default 0)")
    p.add_argument("--crop", type=int, default=32, choices=[16, 32],
                   help="training crop side (default 32; the sampler always runs 32³ blocks)")
    p.add_argument("--conditional", action="store_true",
                   help="train an outpainting model: the known values and mask of each block are extra inputs "
                        "(masks shaped like the planner's), the loss is on unknown voxels; sample it with the "
                        "plan preset 'conditional'")
    p.add_argument("--known-input", choices=["clean", "noisy"],
                   help="conditional: the known voxels of the noisy input hold their clean values (default for a new "
                        "run; TD-Paint's timestep 0) or re-noised ones like the unknown voxels")
    p.add_argument("--self-cond", action="store_true",
                   help="self-conditioning: the model also sees its previous estimate of the clean block (for half "
                        "of the training steps its own first-pass estimate; the sampler feeds it at every step); "
                        "with --init-from, the parent's weights carry over (zero weights on the new inputs)")
    p.add_argument("--attention", action="store_true",
                   help="end the U-Net's coarsest level with self-attention, so every position sees the whole "
                        "block (about 2 %% more weights); with --init-from, or on --resume of a lineage without it (the "
                        "lineage grows the layer in place: steps, optimizer moments and validation curve continue), "
                        "the trained weights carry over and the new layer starts as the identity")
    p.add_argument("--extend-schedule", metavar="T", type=int,
                   help="with --init-from: continue the parent's linear β ramp to T steps (its timesteps unchanged, "
                        "the new ones noisier), so that the walk's first step is pure noise (T = 250 ends at "
                        "ᾱ = 0.08; 500 ends at 4e-5)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from this trainer checkpoint's EMA weights (its U-Net, encoding, schedule and "
                        "target are kept; an unconditional one is widened for --conditional)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--T", type=int, default=250, help="diffusion steps (default 250)")
    p.add_argument("--val", dest="val_pattern", help="glob on file names for validation volumes "
                   "(default: seed number >= 1019)")
    p.add_argument("--val-every", type=int, default=250, help="validation every N steps (default 250)")
    p.add_argument("--val-blocks", type=int, default=64, help="fixed validation blocks (default 64)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--time-limit", dest="time_limit_min", type=float,
                   help="stop (and checkpoint) after this many minutes of wall time")
    p.add_argument("--cpu-time-limit", dest="cpu_time_limit_min", type=float,
                   help="stop (and checkpoint) after this many minutes of process CPU time")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its model, schedule, encoding and files are kept)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    import json

    from ..errors import require

    require("torch", "train", "gp-engine train")
    from ..train import TrainOptions, train

    from ..errors import GPEngineError

    model_args = {"--preset": args.preset, "--encoding": args.encoding, "--bits": args.bits,
                  "--levels": args.levels, "--target": args.target}
    given = [k for k, v in model_args.items() if v is not None]
    if args.init_from and given:
        raise GPEngineError(f"{', '.join(given)} conflict(s) with --init-from {args.init_from}: the U-Net, encoding "
                            "and target come from that checkpoint; drop them")
    opts = TrainOptions(
        data=args.data or [], out=args.out, preset=args.preset or "small", steps=args.steps,
        batch_size=args.batch_size, encoding=args.encoding or "separable", levels=args.levels, bits=args.bits, colouring=args.colouring, device=args.device, precision=args.precision,
        lr=args.lr, cooldown_steps=args.cooldown_steps, loss=args.loss, target=args.target or "eps", weighting=args.weighting, gamma=args.gamma, aux_ce=args.aux_ce,
        crop=args.crop, cpu_time_limit_min=args.cpu_time_limit_min, ema_decay=args.ema_decay, T=args.T, val_pattern=args.val_pattern,
        val_every=args.val_every, val_blocks=args.val_blocks, checkpoint_every=args.checkpoint_every,
        time_limit_min=args.time_limit_min, seed=args.seed, threads=args.threads, compile=args.compile,
        resume=args.resume, force=args.force, progress=not args.quiet, conditional=args.conditional,
        init_from=args.init_from, known_input=args.known_input, self_cond=args.self_cond, attention=args.attention,
        extend_schedule=args.extend_schedule)
    meta = train(opts)
    summary = {k: meta[k] for k in ("steps", "samples_seen", "wall_time_s", "cpu_time_s", "device",
                                    "final_train_loss", "final_val_loss", "final_val_x0w",
                                    "stopped_by_time_limit")}
    print(json.dumps({"checkpoint": str(args.out), **summary}, indent=2))
    return 0
