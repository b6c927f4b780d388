"""All-reduce through ``torch.distributed`` with several local processes.

Gloo on CPUs (the processes share the host's memory and cores), NCCL where there are at least
two GPUs. The ranks run as child interpreters (``python -m sextant.calibrate.collectives``, so the
caller's main module is never re-imported) and rendezvous on a free local TCP port; rank 0
times each size (median of its repeats, after a barrier) and writes the records to a JSON file
the parent reads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, backend: str, port: int, sizes: list[int], repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    records = []
    for n_bytes in sizes:
        x = torch.ones(max(1, n_bytes // 4), dtype=torch.float32, device=device)
        dist.all_reduce(x)  # warm-up (connection setup)
        samples = []
        for _ in range(repeats):
            dist.barrier()
            if backend == "nccl":
                torch.cuda.synchronize()
            start = time.perf_counter()
            dist.all_reduce(x)
            if backend == "nccl":
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        samples.sort()
        records.append({"bytes": x.numel() * 4, "seconds": samples[len(samples) // 2]})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(records, f)
    dist.destroy_process_group()


def all_reduce(backend: str, world: int, sizes: list[int], repeats: int = 5, timeout_s: float = 300) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "allreduce.json")
        port = _free_port()
        cmd = [sys.executable, "-m", "sextant.calibrate.collectives", backend, str(world), str(port),
               ",".join(map(str, sizes)), str(repeats), out]
        procs = [subprocess.Popen([*cmd, str(rank)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for rank in range(world)]
        errors = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}")
        if errors:
            raise RuntimeError(f"all-reduce benchmark ({backend}, {world} ranks) failed: {errors[0]}")
        with open(out) as f:
            records = json.load(f)
    for r in records:
        r.update(backend=backend, world=world)
    return records


if __name__ == "__main__":
    _backend, _world, _port, _sizes, _repeats, _out, _rank = sys.argv[1:8]
    _worker(int(_rank), int(_world), _backend, int(_port), [int(x) for x in _sizes.split(",")], int(_repeats), _out)
