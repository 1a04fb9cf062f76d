"""ZeRO model-state memory per rank, measured on real DeepSpeed engines.

A GPT-2-like model of about 92M parameters (12 layers, width 768, 12 heads, vocabulary 8192, 128
positions), fp32, torch's AdamW. For ZeRO-2 and ZeRO-3, without and with offload (ZeRO-2: the
optimizer; ZeRO-3: the optimizer and the parameters), at 1 and at 2 data-parallel ranks (gloo, one
process per rank, the cases one after another), each rank builds its engine with our config builder
(stages.runtime.deepspeed_config.engine_config; under ZeRO-3 the model is built inside zero.Init, as
HF's integration builds it), runs one training step so that the optimizer state exists, then a second
forward and backward, and, with the gradients alive (the steady-state peak), accounts the engine's own
tensors, each storage counted once:

  params     the parameters: under ZeRO-3 the rank's partitions (ds_tensor) plus the persistent
             small parameters kept whole on every rank; else the full (flattened) parameters
  grads      the gradients the engine holds: the parameters' .grad, its reduced partition buffers
             and the master weights' .grad
  optimizer  the inner optimizer's state (Adam's two moments, the step) and its fp32 master weights
             where ZeRO keeps a copy apart from the parameters
  buffers    every other tensor the ZeRO optimizer holds (reduction buckets, staging copies): not model
             state (ZeRO's "residual state"), shown apart and left out of the totals and ratios

and splits the model states into "on the accelerator" and "offloaded to host". On a machine with an
accelerator that is where each tensor lives; on a CPU-only machine everything lives in RAM, so the
split is the one the offload settings ask for (optimizer state, master weights and gradient partitions
to the host with offload_optimizer, parameter partitions with offload_param). The growth of the
process's RSS from before the model is built to the accounting point is printed as a cross-check
(freed heap memory handed back first; it also counts the buffers' written pages).

The builder decides the stage: at one rank without offload it may build ZeRO 1-2 as stage 0 (nothing
to shard there), so the table shows the stage each engine reports.

    python -m bench.zero_memory [--layers 12] [--width 768] [--vocab 8192] [--detail]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import socket
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from bench import record

MiB = 2**20
BATCH = (1, 16)  # sequences x tokens per step: model states do not depend on it, and the steps stay short
CATEGORIES = ("params", "grads", "optimizer", "other")


def offloaded(category: str, source: str, offload_optimizer: bool, offload_param: bool) -> bool:
    """Where the offload settings put a tensor, by its category and the name it was found under: True for
    host memory. ZeRO-Offload moves the optimizer step, with its fp32 master weights, its moments and the
    gradient partitions it reads, to the host; offload_param (ZeRO-3) moves the parameter partitions.
    DeepSpeed names its other host buffers "..cpu..", its device-side staging buffers "..gpu..";
    reduction buckets stay on the device."""
    if "cpu" in source or "gpu" in source:
        return "cpu" in source
    if category in ("optimizer", "grads"):
        return offload_optimizer
    if category == "params":
        return offload_param
    return False


def ratio_to_one_rank(rows: list[dict]) -> dict[tuple, float]:
    """Total bytes per rank of each row over the 1-rank row of the same config: {(config, ranks): ratio}."""
    one = {row["config"]: row["total"] for row in rows if row["ranks"] == 1}
    return {(row["config"], row["ranks"]): row["total"] / one[row["config"]] for row in rows if one.get(row["config"])}


def rss_bytes() -> int:
    """Resident memory of this process, after handing freed heap memory back to the OS (glibc keeps it
    otherwise, and RSS would count the step's freed temporaries)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def account(engine, offload_optimizer: bool, offload_param: bool) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes of the engine's model states on this rank, by "<category>/<device|host>", and by where they
    were found ("<category> <source>"); each storage once, in the first category it is found in."""
    has_accelerator = torch.cuda.is_available()
    seen: set[tuple] = set()
    visited: set[int] = set()
    totals: dict[str, int] = defaultdict(int)
    sources: dict[str, int] = defaultdict(int)

    def add(category: str, tensor, source: str) -> None:
        if not torch.is_tensor(tensor) or tensor.numel() == 0 or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen:
            return
        seen.add(key)
        if has_accelerator:
            host = tensor.device.type == "cpu"
        else:
            host = offloaded(category, source, offload_optimizer, offload_param)
        totals[f"{category}/{'host' if host else 'device'}"] += storage.nbytes()
        sources[f"{category} {source}"] += storage.nbytes()

    def walk(category: str, value, source: str, depth: int = 0) -> None:
        if torch.is_tensor(value):
            add(category, value, source)
            add("grads", value.grad, source + " .grad")
        elif depth < 4 and isinstance(value, (list, tuple, set)):
            for item in value:
                walk(category, item, source, depth + 1)
        elif depth < 4 and isinstance(value, dict):
            for item in value.values():
                walk(category, item, source, depth + 1)
        elif depth < 4 and type(value).__module__.startswith("deepspeed.") and hasattr(value, "__dict__") \
                and id(value) not in visited:  # DeepSpeed's own holders, e.g. ZeRO-3's reduce buckets
            visited.add(id(value))
            for name, item in vars(value).items():
                walk(category, item, f"{source}.{name}", depth + 1)

    model_params = list(engine.module.parameters())
    for p in model_params:  # params: the ZeRO-3 partition, and whatever full data is resident
        add("params", getattr(p, "ds_tensor", None), "ds_tensor")
        add("params", p.data, "param.data")
    zero = engine.optimizer
    inner = getattr(zero, "optimizer", zero)  # stage 0 has no ZeRO wrapper
    master = [p for group in inner.param_groups for p in group["params"]]
    # fp32 master weights, unless they are the parameters themselves (stage 0): ZeRO-3 lends them to the
    # inner optimizer only inside its step, so they are also found as the keys of its state
    for p in master + list(inner.state):
        add("optimizer", p, "master weights")
    for state in inner.state.values():
        walk("optimizer", state, "state")
    for p in model_params:
        add("grads", p.grad, "param.grad")
    for p in master:
        add("grads", p.grad, "master.grad")
    if zero is not inner:
        attributes = vars(zero)
        for name, value in attributes.items():  # the gradient buffers first, by name (not the staging ones)
            if "grad" in name and "temp" not in name:
                walk("grads", value, name)
        for name, value in attributes.items():
            walk("other", value, name)
    return dict(totals), dict(sources)


def rank_main(rank: int, world_size: int, port: int, stage: int, offload: bool, shape: dict, out_dir: str) -> None:
    import json

    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, GPT2Config

    from common.config import DeepSpeedSection
    from stages.runtime.deepspeed_config import engine_config

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    section = DeepSpeedSection(zero_stage=stage, offload_optimizer=offload, offload_param=offload and stage == 3)
    config = engine_config(section, world_size=world_size, micro_batch_size=BATCH[0], max_grad_norm=1.0)
    rss_before = rss_bytes()
    torch.manual_seed(0)
    model_config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if config["zero_optimization"]["stage"] == 3:
        with deepspeed.zero.Init(config_dict_or_path=config):
            model = AutoModelForCausalLM.from_config(model_config)
    else:
        model = AutoModelForCausalLM.from_config(model_config)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
    generator = torch.Generator().manual_seed(rank)
    for step in range(2):
        tokens = torch.randint(0, shape["vocab_size"], BATCH, generator=generator)
        loss = engine(input_ids=tokens, labels=tokens).loss
        engine.backward(loss)
        if step == 0:
            engine.step()
    # the optimizer state of step 0 and the gradients of step 1: the peak between two steps
    states, sources = account(engine, section.offload_optimizer, section.offload_param)
    rss_growth = rss_bytes() - rss_before
    result = {"rank": rank, "stage": engine.zero_optimization_stage(), "params_count": n_params, "states": states,
              "sources": sources, "rss_growth": rss_growth}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def measure(world_size: int, stage: int, offload: bool, shape: dict) -> list[dict]:
    """Each rank's accounting, from `world_size` fresh processes."""
    import json

    import torch.multiprocessing as mp

    # imported once here, so that the forked ranks inherit them (about 20 s a process otherwise): what
    # building the model and DeepSpeed's optimizer check import on first use
    for module in ("deepspeed", "transformers.models.gpt2.modeling_gpt2", "deepspeed.runtime.zero.muon.muon_optimizer"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(rank_main, args=(world_size, port, stage, offload, shape, out_dir), nprocs=world_size, join=True,
                           start_method="fork")
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world_size)]


def summarize(name: str, world_size: int, ranks: list[dict]) -> dict:
    """One table row: the rank with the most model state (ranks differ by the odd partition)."""
    worst = max(ranks, key=lambda r: sum(v for k, v in r["states"].items() if not k.startswith("other/")))
    states = worst["states"]
    row = {"config": name, "ranks": world_size, "stage": worst["stage"], "params_count": worst["params_count"],
           "rss_growth": max(r["rss_growth"] for r in ranks), "sources": worst["sources"]}
    for category in CATEGORIES:
        row[category] = sum(v for k, v in states.items() if k.startswith(category + "/"))
    row["total"] = row["params"] + row["grads"] + row["optimizer"]  # model states; "other" are buffers
    for place in ("device", "host"):
        row[place] = sum(v for k, v in states.items() if k.endswith("/" + place) and not k.startswith("other/"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--detail", action="store_true", help="print where each case's bytes were found")
    args = parser.parse_args()
    shape = {"n_layer": args.layers, "n_embd": args.width, "n_head": args.width // 64, "vocab_size": args.vocab, "n_positions": 128}
    rows = []
    for stage in (2, 3):
        for offload in (False, True):
            name = f"ZeRO-{stage}" + ((" + offload opt" if stage == 2 else " + offload opt+param") if offload else "")
            for world_size in (1, 2):
                print(f"[zero_memory] {name}, {world_size} rank(s)", flush=True)
                rows.append(summarize(name, world_size, measure(world_size, stage, offload, shape)))
                if args.detail:
                    for source, size in sorted(rows[-1]["sources"].items()):
                        print(f"    {source:<60}{size / MiB:>9.1f} MiB")
    ratios = ratio_to_one_rank(rows)
    print(f"\nmodel: GPT-2, {rows[0]['params_count'] / 1e6:.1f}M parameters ({args.layers} layers, width {args.width}, "
          f"vocabulary {args.vocab}), fp32, torch AdamW; MiB per rank (the larger rank), after one step and a second backward")
    print(f"{'config':<28}{'ranks':>6}{'stage':>6}{'params':>8}{'grads':>8}{'optim':>8}{'states':>9}{'/1 rank':>8}"
          f"{'device':>8}{'host':>8}{'buffers':>9}{'RSS +':>8}")
    for row in rows:
        print(f"{row['config']:<28}{row['ranks']:>6}{row['stage']:>6}{row['params'] / MiB:>8.0f}{row['grads'] / MiB:>8.0f}"
              f"{row['optimizer'] / MiB:>8.0f}{row['total'] / MiB:>9.0f}{ratios[row['config'], row['ranks']]:>8.2f}"
              f"{row['device'] / MiB:>8.0f}{row['host'] / MiB:>8.0f}{row['other'] / MiB:>9.0f}{row['rss_growth'] / MiB:>8.0f}")
    print("states: params + grads + optim, split into device and host; /1 rank: states over the same config's 1-rank "
          "states; stage: what the engine reports (our builder's choice); buffers: reduction buckets and staging copies, "
          "as allocated (on a CPU only the pages written are resident, so RSS counts part of them)")
    if not torch.cuda.is_available():
        print("CPU-only: device and host are both RAM here; the split is the one the offload settings ask for")
    for stage in (2, 3):
        record("zero_memory", f"ZeRO-{stage}: 2-rank / 1-rank model states", ratios[f"ZeRO-{stage}", 2], "ratio",
               "<= 0.55" if stage == 3 else "")
    zero3 = next(row for row in rows if row["config"] == "ZeRO-3" and row["ranks"] == 2)
    record("zero_memory", "ZeRO-3: model states per rank at 2 ranks", zero3["total"] / MiB, "MiB")


if __name__ == "__main__":
    main()
