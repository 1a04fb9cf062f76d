"""Pretraining and SFT speed, in tokens per second, of our training path against a plain-PyTorch floor.

Two workloads: pretraining (the plain LM loss on the tiny world's corpus, packed into 128-token windows)
and SFT (the tiny world's demonstrations, prompt tokens masked out of the loss), each on two models: the
tiny world's GPT-2 (model.init, char-level tokenizer) and a larger GPT-2 (4 layers, width 256, 4 heads,
vocabulary 8192, 128 positions; the char tokenizer's ids are all below 8192).

Ours is the stage's own worker, stages.runtime.lm_training._worker, run unchanged in this process on a
gloo group of one: TRL's SFTTrainer (here, without a GPU, our subclass that takes TRL's loss from the
full logits) with our training arguments and DeepSpeed config (deepspeed.zero_stage, 2 by default), metrics.jsonl and TensorBoard logging every `log_every` steps. The benchmark only watches
it: a subclass of SFTTrainer, patched in for the call, records each step's batch and the time each
optimizer step ends. The floor is what any trainer must spend on the same batches: model.train(),
forward with the model's own loss, backward, clip_grad_norm_ (the stage's max_grad_norm),
torch.optim.AdamW(fused=True) step, zero_grad(set_to_none=True); no DeepSpeed, no Trainer.

Same process, same thread count, same initial weights (both load the stage's init directory), same
batches: the two alternate step by step, the floor training on each of the Trainer's batches right
after the Trainer did, so that other load on the machine hits both alike. The first window of steps
is a warm-up; each figure is the fastest of the other windows (bench.best_of's rule, for a loop the
Trainer runs in one call). Tokens are the non-pad tokens through the model.

    python -m bench.lm_throughput [--threads 2] [--window 4] [--windows 3] [--zero-stage 2] [--profile]

--profile prints, per model and workload, where our path spends a step (cProfile over its timed windows;
the profiler slows the Python-heavy parts most). On cores that other processes keep busy, two threads
make both paths several times slower and the ratio noisy (see run.torch_threads); --threads 1 is steadier.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from bench import record
from common.config import load_config
from stages.data.datasets import make_world, pretraining_text, sft_dataset
from stages.models.loading import build_model, model_kwargs, train_char_tokenizer

LARGER_GPT2 = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8192, "n_positions": 128, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "labels")  # what the floor passes on of a Trainer batch


def start_group() -> None:
    """A gloo group of one, with the environment a launcher (Ray Train) gives a worker: the HF Trainer's
    DeepSpeed integration reads it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens through the model."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def window_rates(tokens: list[int], seconds: list[float], window: int) -> list[float]:
    """Tokens per second of consecutive windows of `window` steps (a trailing partial window is dropped).

    tokens, seconds: per step, in order."""
    if len(tokens) != len(seconds):
        raise ValueError(f"{len(tokens)} token counts but {len(seconds)} step times")
    return [sum(tokens[i : i + window]) / sum(seconds[i : i + window]) for i in range(0, len(tokens) - window + 1, window)]


@dataclass
class Case:
    """What one model x workload run collects: per step of our path and of the floor, tokens and seconds."""

    window: int
    windows: int  # timed windows, after one warm-up window
    threads: int
    floor_step: Callable[[dict], float] | None = None
    tokens: list[int] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)  # seconds per step (end of one optimizer step to the next)
    floor: list[float] = field(default_factory=list)
    zero_stage: int | None = None  # the stage of the Trainer's DeepSpeed engine
    checkpointing: bool | None = None  # the Trainer's gradient_checkpointing
    ours_first_loss: float | None = None
    floor_first_loss: float | None = None
    batches: list[dict] = field(default_factory=list)
    profile: cProfile.Profile | None = None

    @property
    def steps(self) -> int:
        return self.window * (self.windows + 1)


def plain_floor(init_dir: Path, config, train) -> Callable[[dict], float]:
    """One plain eager training step on a batch; returns the loss."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(init_dir), **model_kwargs(config.model, config.deepspeed.precision))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, train.adam_beta2), weight_decay=train.weight_decay,
                                  fused=True)

    def step(batch: dict[str, torch.Tensor]) -> float:
        loss = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def observed_trainer(case: Case):
    """SFTTrainer that records each step's batch and runs the floor's step on it right after its own."""
    import trl
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        """After each of the Trainer's optimizer steps, the floor's step on the same batch; our step's time
        runs from the end of the floor's step to the end of our next one."""

        def __init__(self):
            self.last = None

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.last is not None:
                case.ours.append(now - self.last)
            if case.profile:
                case.profile.disable()
            started = time.perf_counter()
            loss = case.floor_step(case.batches[state.global_step - 1])
            case.floor.append(time.perf_counter() - started)
            if case.floor_first_loss is None:
                case.floor_first_loss = loss
            if case.profile and case.window <= state.global_step < case.steps:  # our timed steps only
                case.profile.enable()
            self.last = time.perf_counter()

    class Observed(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Interleave())

        def training_step(self, model, inputs, *args, **kwargs):
            case.zero_stage = model.zero_optimization_stage()  # model: the Trainer's DeepSpeed engine
            case.checkpointing = self.args.gradient_checkpointing
            if torch.get_num_threads() != case.threads:
                raise RuntimeError(f"the Trainer runs on {torch.get_num_threads()} threads, the floor on {case.threads}")
            batch = {k: v for k, v in inputs.items() if torch.is_tensor(v)}  # before compute_loss adds its keys
            case.batches.append(batch)
            case.tokens.append(batch_tokens(batch))
            loss = super().training_step(model, inputs, *args, **kwargs)
            if case.ours_first_loss is None:
                case.ours_first_loss = loss.item()
            return loss

    return mock.patch.object(trl, "SFTTrainer", Observed)


def run_case(root: Path, config, workload: str, dataset, case: Case) -> None:
    from stages.runtime.lm_training import LMTrainingSpec, _worker

    train = config.pretrain if workload == "pretrain" else config.sft
    case.floor_step = plain_floor(root / "init", config, train)
    spec = LMTrainingSpec(stage=workload, config=config, run_dir=str(root / f"run-{workload}"), init_model=str(root / "init"),
                          tokenizer=str(root / "init"), dataset=dataset, train=train, lora=None, packing=workload == "pretrain")
    with observed_trainer(case):
        _worker(spec, 0)
    if len(case.batches) != case.steps:
        raise RuntimeError(f"{workload}: the Trainer ran {len(case.batches)} steps, expected {case.steps}")


def save_model(root: Path, name: str, tokenizer, init: dict | None) -> None:
    """The initial weights both paths load: the tiny world's GPT-2 from model.init, or the larger GPT-2."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    if name == "tiny":
        model = build_model(init, tokenizer)
    else:
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
        model = AutoModelForCausalLM.from_config(GPT2Config(**LARGER_GPT2, **ids), attn_implementation="sdpa")
    model.save_pretrained(root / "init")
    tokenizer.save_pretrained(root / "init")


# Where our step's time goes: (label, file, function); the cumulative time of the outermost match
PROFILE_PARTS = (
    ("forward and loss (compute_loss from the full logits, on CPU)", "runtime/lm_training.py", "compute_loss"),
    ("forward and loss (TRL's compute_loss, with its fused head)", "trainer/sft_trainer.py", "compute_loss"),
    ("  of which TRL's chunked LM head, loss and entropy", "kernels/chunked_logprob.py", "forward"),
    ("backward (DeepSpeed engine.backward)", "runtime/engine.py", "backward"),
    ("  of which the checkpointed layers' forward, again", "utils/checkpoint.py", "recompute_fn"),
    ("  of which the chunked LM head's backward", "kernels/chunked_logprob.py", "backward"),
    ("  of which DeepSpeed's gradient all-reduce", "runtime/engine.py", "allreduce_gradients"),
    ("optimizer step, clipping (DeepSpeed engine.step)", "runtime/engine.py", "step"),
    ("batch fetch and collation", "transformers/trainer.py", "get_batch_samples"),
    ("logging and checkpoint hooks", "transformers/trainer.py", "_maybe_log_save_evaluate"),
)


def print_profile(case: Case, title: str) -> None:
    """Our step's time by part (PROFILE_PARTS), then the functions with the most time of their own."""
    stats = pstats.Stats(case.profile, stream=io.StringIO()).stats
    steps = case.steps - case.window
    ours = sum(case.ours[case.window - 1 :]) / steps
    floor = sum(case.floor[case.window :]) / steps
    print(f"\nprofile of our path, {title}: ms per step over {steps} steps (profiled: {ours * 1e3:.0f} ms a step; "
          f"the floor, unprofiled, {floor * 1e3:.0f} ms)")
    for label, suffix, function in PROFILE_PARTS:
        matches = [v[3] for (filename, _, name), v in stats.items() if name == function and filename.endswith(suffix)]
        if matches:
            print(f"  {max(matches) / steps * 1e3:8.1f}  {label}")
    print("  own time (ms per step, calls per step):")
    for (filename, line, name), (_, calls, own, _, _) in sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:12]:
        where = "/".join(Path(filename).parts[-2:]) + f":{line}" if filename != "~" else "built-in"
        print(f"  {own / steps * 1e3:8.1f}  {calls / steps:5.0f}x  {name}  ({where})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=4, help="optimizer steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows, after one warm-up window")
    parser.add_argument("--zero-stage", type=int, default=None, help="deepspeed.zero_stage (default: the config's)")
    parser.add_argument("--models", default="tiny,larger")
    parser.add_argument("--workloads", default="pretrain,sft")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # else accelerate sets torch's threads to the physical cores
    torch.set_num_threads(args.threads)
    start_group()
    steps = args.window * (args.windows + 1)
    batch_size = 16
    # one Ray Train worker: the config's data-parallel size is this process's group of one
    overrides = ["ray.num_workers=1", f"world.corpus_docs={4 * steps * batch_size}", f"world.demonstrations={2 * steps * batch_size}"]
    for stage in ("pretrain", "sft"):
        overrides += [f"{stage}.max_steps={steps}", f"{stage}.batch_size={batch_size}", f"{stage}.max_length=128",
                      f"{stage}.checkpoint_every={10 * steps}", f"{stage}.grad_accum=1"]
    if args.zero_stage is not None:
        overrides.append(f"deepspeed.zero_stage={args.zero_stage}")
    config = load_config(None, overrides)
    world = make_world(config.world)
    corpus = pretraining_text(None, config.world)
    tokenizer = train_char_tokenizer([world.alphabet(), *corpus["text"]])
    datasets = {"pretrain": corpus, "sft": sft_dataset(config.data, config.world, tokenizer, config.run.seed)}
    results = []
    for name in args.models.split(","):
        for workload in args.workloads.split(","):
            case = Case(window=args.window, windows=args.windows, threads=args.threads, profile=cProfile.Profile() if args.profile else None)
            with tempfile.TemporaryDirectory() as tmp:
                save_model(Path(tmp), name, tokenizer, config.model.init)
                run_case(Path(tmp), config, workload, datasets[workload], case)
            timed_tokens = case.tokens[args.window :]
            ours = max(window_rates(timed_tokens, case.ours[args.window - 1 :], args.window))
            floor = max(window_rates(timed_tokens, case.floor[args.window :], args.window))
            results.append((name, workload, ours, floor, case))
    print(f"\nworkload: {args.windows} windows of {args.window} steps after a warm-up window, {batch_size} sequences x "
          f"<= 128 tokens per step, {args.threads} thread(s), one rank, deepspeed.zero_stage={config.deepspeed.zero_stage}, "
          f"{config.deepspeed.precision}; gradient checkpointing in our path: {'on' if results[0][4].checkpointing else 'off'}; "
          f"fastest window")
    print(f"{'model':<8}{'workload':<10}{'engine stage':>13}{'tokens/step':>12}{'ours tok/s':>12}{'floor tok/s':>13}"
          f"{'ours/floor':>12}{'first loss ours / floor':>26}")
    for name, workload, ours, floor, case in results:
        print(f"{name:<8}{workload:<10}{case.zero_stage:>13}{sum(case.tokens) / len(case.tokens):>12.0f}{ours:>12.0f}"
              f"{floor:>13.0f}{ours / floor:>12.2f}{case.ours_first_loss:>17.4f} / {case.floor_first_loss:.4f}")
        record("lm_throughput", f"{name} {workload}: tokens/s ratio (ours / plain floor)", ours / floor, "ratio", ">= 0.8")
        record("lm_throughput", f"{name} {workload}: ours tokens/s", ours, "tokens/s")
        record("lm_throughput", f"{name} {workload}: plain floor tokens/s", floor, "tokens/s")
    print("(first loss: same weights, same batch; on packed pretraining windows ours divides the summed loss by every "
          "label, 128 a window, the floor by the 127 predicted ones)")
    if args.profile:
        for name, workload, _, _, case in results:
            print_profile(case, f"{name} {workload}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
