"""Decoding speed of Mask-Predict (sft.method cmlm) against autoregressive decoding at the same size.

Both models have the tiny world's shape (4 layers, hidden 128, 4 heads; random weights: speed does not
depend on them) and the same character tokenizer. Each decodes a batch of prompts to a fixed response
length: the causal LM greedily with its KV cache, one token per step; the masked LM with Mask-Predict's
fixed number of iterations over the whole response (length_mode fixed, so its length head is not in
the way). Instruct-XLMR reports about 3x faster decoding than autoregressive models for long outputs;
on one-word answers (the tiny world's) autoregressive decoding is the cheaper one.

    python -m bench.cmlm_decoding [--batch 32] [--lengths 8 16 32 64 72] [--iters 10]
"""

from __future__ import annotations

import argparse

from bench import best_of, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 72])
    parser.add_argument("--iters", type=int, default=10, help="Mask-Predict iterations")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from common.config import TINY_GPT2, CMLMSection
    from stages.models.cmlm import (
        CMLMModel,
        CMLMSettings,
        add_mask_token,
        build_encoder,
    )
    from stages.models.loading import build_model, train_char_tokenizer
    from tiny_world import TinyWorld

    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = TinyWorld()
    tokenizer = train_char_tokenizer([world.alphabet(), *world.corpus(200)])
    prompts = [e.prompt for e in world.train_examples(args.batch, "bench")]
    causal = build_model(TINY_GPT2, tokenizer).eval()
    add_mask_token(tokenizer)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    encoder = build_encoder(CMLMSection().init, tokenizer)
    room = TINY_GPT2["n_positions"] - batch["input_ids"].shape[1]
    if max(args.lengths) > room:
        raise SystemExit(f"--lengths: the causal model has {TINY_GPT2['n_positions']} positions and the prompts take "
                         f"{batch['input_ids'].shape[1]}: at most {room} response tokens")
    print(f"prompts: {args.batch} of up to {batch['input_ids'].shape[1]} tokens; both models "
          f"{sum(p.numel() for p in causal.parameters()) / 1e6:.2f}M (causal) / {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M "
          f"(masked) parameters; one thread")
    print(f"{'length':>7}{'autoregressive ms':>19}{'mask-predict ms':>17}{'speed-up':>10}   (per response)")
    speedups = {}
    for length in args.lengths:
        masked = CMLMModel.from_tokenizer(encoder, tokenizer, CMLMSettings(length_mode="fixed", fixed_length=length,
                                                                           decode_iters=args.iters)).eval()
        with torch.no_grad():
            autoregressive = best_of(args.repeats, lambda: causal.generate(
                **batch, max_new_tokens=length, min_new_tokens=length, do_sample=False, pad_token_id=tokenizer.pad_token_id))
            mask_predict = best_of(args.repeats, lambda: masked.generate(**batch, max_new_tokens=length))
        speedups[length] = autoregressive / mask_predict
        print(f"{length:>7}{1000 * autoregressive / args.batch:>19.2f}{1000 * mask_predict / args.batch:>17.2f}"
              f"{speedups[length]:>9.2f}x")
    longest = max(args.lengths)
    record("cmlm_decoding", f"Mask-Predict speed-up, {longest}-token responses", speedups[longest], "x")
    record("cmlm_decoding", f"Mask-Predict speed-up, {min(args.lengths)}-token responses", speedups[min(args.lengths)], "x")


if __name__ == "__main__":
    main()
