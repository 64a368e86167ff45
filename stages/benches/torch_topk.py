"""The topk-f16 encode done the usual Python way, for comparison with gradline's:
torch.topk on magnitudes, gather, cast to f16, pack [n][k][indices][values] little-endian.

    python stages/benches/torch_topk.py            # one thread, as gradline's encode
    python stages/benches/torch_topk.py --threads 2

Prints GB/s of f32 input per (n, density), the median of a few runs.
"""

import argparse
import time

import numpy as np
import torch


def encode(x: torch.Tensor, density: float) -> bytes:
    n = x.numel()
    k = min(n, int(np.ceil(density * n - 1e-9 * max(1.0, density * n))))
    _, idx = torch.topk(x.abs(), k, sorted=True)
    vals = x[idx].to(torch.float16)
    header = np.array([n, k], dtype="<u4").tobytes()
    return header + idx.to(torch.int32).numpy().astype("<u4").tobytes() + vals.numpy().astype("<f2").tobytes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000, 100_000_000])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for n in args.sizes:
        x = torch.from_numpy((rng.standard_normal(n, dtype=np.float32) * 1e-3))
        for density in (0.01, 0.001):
            runs = 3 if n >= 100_000_000 else 7
            encode(x, density)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                blob = encode(x, density)
                times.append(time.perf_counter() - start)
            t = sorted(times)[len(times) // 2]
            print(f"n={n} density={density}: {t * 1e3:.1f} ms, {4 * n / t / 1e9:.2f} GB/s, {len(blob)} bytes")


if __name__ == "__main__":
    main()
