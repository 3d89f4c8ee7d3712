"""The baseline of bench/train_throughput.py: plain PyTorch DDP (gloo, CPU) under torchrun.

What a user would write without Atoll: read the Parquet file with pyarrow, split it, standardise it
with numpy, keep it in memory as tensors, shard it by rank with DistributedSampler, train with DDP.
It uses the same model constructor (``atoll.models.build``), the same deterministic train/validation
split (``atoll.data.SplitFilter``: a hash of each row, so both sides train on the very same rows), the
same optimiser, batch size (per worker), epochs and seed, and measures throughput the way
``atoll.train.train_loop`` does: global train samples (all-reduced) / rank 0's train-phase time.

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/_ddp_baseline.py \
        --parquet digits.parquet --spec-json spec.json --out result.json

Not a benchmark by itself: bench/train_throughput.py runs it.
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # before the heavy imports: the start-up cost is part of the baseline's wall time

import argparse  # noqa: E402 - timed from T_PROCESS on
import json  # noqa: E402 - timed from T_PROCESS on
import os  # noqa: E402 - timed from T_PROCESS on
import shutil  # noqa: E402 - timed from T_PROCESS on
import tempfile  # noqa: E402 - timed from T_PROCESS on
from pathlib import Path  # noqa: E402 - timed from T_PROCESS on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parquet", required=True)
    parser.add_argument("--spec-json", required=True, help="the resolved TrainSpec (model_dump as JSON)")
    parser.add_argument("--out", required=True, help="rank 0 writes its per-epoch figures here (JSON)")
    parser.add_argument("--ckpt-dir", help="where rank 0 writes its per-epoch checkpoint (default: a temp dir, removed)")
    args = parser.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from atoll import models
    from atoll.data import SplitFilter
    from atoll.specs import TrainSpec
    from atoll.train.loop import _optimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DistributedSampler

    t_imports = time.time()
    spec = json.loads(Path(args.spec_json).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t_pg = time.time()

    # --- data: pyarrow read, the same split, standardisation fitted on the training split -------------
    frame = pq.read_table(args.parquet).to_pandas()
    label = spec["dataset"]["label"]
    features = spec["dataset"]["features"] or [c for c in frame.columns if c != label]
    columns = features + [label]
    vfrac, seed = spec["dataset"]["validation_fraction"], spec["seed"]
    train_df = SplitFilter(columns, vfrac, "train", seed)(frame)
    val_df = SplitFilter(columns, vfrac, "validation", seed)(frame)
    x_train = train_df[features].to_numpy(dtype=np.float64)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std[std < 1e-8] = 1.0
    classes = np.unique(train_df[label].to_numpy())

    def tensors(df):
        x = (df[features].to_numpy(dtype=np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
        y = np.searchsorted(classes, df[label].to_numpy()).astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    xt, yt = tensors(train_df)
    xv, yv = tensors(val_df)
    t_data = time.time()

    # --- model, DDP, optimiser ---------------------------------------------------------------------
    torch.manual_seed(seed)
    model = models.build(spec["model"]["type"], len(features), len(classes), spec["model"]["params"])
    model = DDP(model)
    optimizer = _optimizer(TrainSpec.model_validate(spec), model.parameters())  # Atoll's own choice of it
    batch_size = spec["batch_size"]  # per worker, as in Atoll
    train_sampler = DistributedSampler(range(len(yt)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    val_sampler = DistributedSampler(range(len(yv)), num_replicas=world, rank=rank, shuffle=False)

    def run_epoch(x, y, sampler, training):
        """Index the in-memory tensors batch by batch (no per-sample collate: the fast way)."""
        sums = torch.zeros(3, dtype=torch.float64)
        model.train(training)
        index = torch.tensor(list(iter(sampler)), dtype=torch.int64)
        with torch.set_grad_enabled(training):
            for start in range(0, len(index), batch_size):
                idx = index[start:start + batch_size]
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if training:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                n = yb.shape[0]
                sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == yb).sum().double(),
                                     torch.tensor(float(n), dtype=torch.float64)])
        return sums

    history = []
    ckpt_dir = None
    if rank == 0:  # only rank 0 writes checkpoints, as in Atoll
        ckpt_dir = args.ckpt_dir or tempfile.mkdtemp(prefix="ddp_baseline_ckpt_")
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    t_train_start = time.time()
    for epoch in range(spec["epochs"]):
        train_sampler.set_epoch(epoch)
        started = time.perf_counter()
        train_sums = run_epoch(xt, yt, train_sampler, True)
        train_time = time.perf_counter() - started
        val_sums = run_epoch(xv, yv, val_sampler, False)
        sums = torch.cat([train_sums, val_sums])
        dist.all_reduce(sums)
        t_loss, t_correct, t_n, v_loss, v_correct, v_n = sums.tolist()
        metrics = {"epoch": epoch, "train_loss": t_loss / max(t_n, 1), "train_accuracy": t_correct / max(t_n, 1),
                   "val_loss": v_loss / max(v_n, 1), "val_accuracy": v_correct / max(v_n, 1),
                   "train_samples": int(t_n), "epoch_time_s": time.perf_counter() - started,
                   "train_time_s": train_time, "samples_per_s": t_n / train_time}
        history.append(metrics)
        if rank == 0:  # a per-epoch checkpoint, as Atoll writes one (outside epoch_time_s there too)
            torch.save(model.module.state_dict(), Path(ckpt_dir) / "model.pt")
            torch.save(optimizer.state_dict(), Path(ckpt_dir) / "optim.pt")
        dist.barrier()
    t_train_end = time.time()
    if rank == 0:
        out = {"history": history, "world_size": world, "torch_threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "train_rows": len(yt), "val_rows": len(yv),
               "timestamps": {"process_start": T_PROCESS, "imports_done": t_imports, "process_group": t_pg,
                              "data_ready": t_data, "train_start": t_train_start, "train_end": t_train_end}}
        Path(args.out).write_text(json.dumps(out))
    dist.destroy_process_group()
    if rank == 0 and not args.ckpt_dir:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
