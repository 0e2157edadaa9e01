"""Learned-optimizer benchmark (issue 5): metastep's compiled core vs a PyTorch implementation
of the same computation, on the CPU with the same thread count (1 by default).

Timed units (64–100–20–10 network, minibatch 32, digits):
* ``inner_step``: one inner training step — minibatch forward and backward of the network and
  the learned optimizer's update (5 momentum/second-moment pairs, 31 features with per-tensor
  normalization, the 31→32→2 MLP on every coordinate, θ ← θ − 0.001·a·exp(0.001·b));
* ``meta_gradient``: one truncated first-order meta-gradient — a ``--length``-step unroll with
  the meta-loss (mean over the truncation of the cross-entropy of a 32-row meta batch), then
  back-propagation to the 1090 optimizer weights with the inner gradients treated as constants.
Before timing, the two implementations are run on the same minibatches in float64 and their
results compared (relative difference printed), so both time the same computation.

    python benchmarks/learned.py [--threads 1] [--repeats 7] [--length 20] [--out learned_bench.json]

Prints median times and the ratio torch/metastep per unit and precision; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from metastep import _core, data, learned

SIZES = [64, 100, 20, 10]
BETAS = [0.5, 0.9, 0.99, 0.999, 0.9999]
TAUS = [3, 10, 30, 100, 300, 1000, 3000, 10000, 300000]
META_SEED_XOR = 0x9b05688c2b3e6c1f  # the core's meta-batch stream (nn/truncated.hpp)


# ---------------------------------------------------------------- PyTorch reference implementation
class TorchLearned:
    def __init__(self, torch, dtype):
        self.t, self.dt = torch, dtype
        self.slices = []
        o = 0
        for a, b in zip(SIZES[:-1], SIZES[1:]):
            self.slices.append(((o, a * b, (a, b)), (o + a * b, b)))
            o += a * b + b
        self.tensors = [(s[0][0], s[0][1]) for s in self.slices] + [(s[1][0], s[1][1]) for s in self.slices]
        self.tensors.sort()
        self.betas = torch.tensor(BETAS, dtype=dtype)
        self.taus = torch.tensor(TAUS, dtype=dtype)

    def loss(self, theta, X, y):
        t = self.t
        a = X
        L = len(self.slices)
        for l, ((wo, wn, shp), (bo, bn)) in enumerate(self.slices):
            a = a @ theta[wo:wo + wn].view(shp) + theta[bo:bo + bn]
            if l + 1 < L:
                a = t.relu(a)
        return t.nn.functional.cross_entropy(a, y)

    def update(self, phi, theta, g, M, V, step):
        t = self.t
        Mp = M * self.betas + (1 - self.betas) * g[:, None]
        Vp = V * self.betas + (1 - self.betas) * (g * g)[:, None]
        rs = t.rsqrt(Vp + 1e-6)
        R = t.cat([g[:, None], Mp * rs, theta[:, None], Mp, Vp, rs], dim=1)
        F = t.cat([R[o:o + n] * t.rsqrt(1e-5 + (R[o:o + n] ** 2).mean(0)) for o, n in self.tensors], dim=0)
        tf = t.tanh(step / self.taus - 1).expand(F.shape[0], 9)
        h = t.relu(t.cat([F, tf], dim=1) @ phi[:992].view(31, 32) + phi[992:1024])
        out = h @ phi[1024:1088].view(32, 2) + phi[1088:]
        return theta - 1e-3 * out[:, 0] * t.exp(1e-3 * out[:, 1]), Mp, Vp

    def inner_steps(self, phi, theta, M, V, step, X, y, batches):
        t = self.t
        with t.no_grad():
            for s, idx in enumerate(batches):
                th = theta.detach().requires_grad_(True)
                with t.enable_grad():
                    g, = t.autograd.grad(self.loss(th, X[idx], y[idx]), th)
                theta, M, V = self.update(phi, theta, g, M, V, float(step + s))
        return theta, M, V

    def meta_gradient(self, phi, theta, M, V, step, X, y, Xm, ym, batches, mbatches):
        t = self.t
        phi = phi.detach().requires_grad_(True)
        J = 0.0
        for s, (idx, midx) in enumerate(zip(batches, mbatches)):
            th = theta.detach().requires_grad_(True)
            g, = t.autograd.grad(self.loss(th, X[idx], y[idx]), th)   # first order: a constant
            theta, M, V = self.update(phi, theta, g, M, V, float(step + s))
            J = J + self.loss(theta, Xm[midx], ym[midx])
        J = J / len(batches)
        grad, = t.autograd.grad(J, phi)
        return float(J), grad


def _median_time(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50, help="inner steps per timed call (time per step is reported)")
    ap.add_argument("--length", type=int, default=20, help="truncation length of the timed meta-gradient")
    ap.add_argument("--out", default="learned_bench.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    torch.set_num_threads(args.threads)

    digits = data.load_digits()
    train = digits.subset(np.arange(300))
    meta = digits.subset(np.arange(300, 600))
    P = learned.num_params(SIZES)
    phi = learned.init_optimizer(0) + 0.1 * np.random.default_rng(0).standard_normal(learned.NUM_OPT_PARAMS)
    warm = learned.meta_gradient(phi, train, meta, length=10, forward_only=True, meta_batch=32, seed=5)
    st = warm.state  # non-zero moments, step 10
    T, B, seed = args.length, 32, 11
    batches = _core.sgd_batches(train.n, B, max(T, args.steps), seed)
    mbatches = _core.sgd_batches(meta.n, B, T, seed ^ META_SEED_XOR)
    rows = []
    agreement = {}
    for dt_name, tdt in (("float64", torch.float64), ("float32", torch.float32)):
        ref = TorchLearned(torch, tdt)
        tt = lambda a: torch.tensor(np.asarray(a), dtype=tdt)  # noqa: E731
        X, y = tt(train.X), torch.tensor(train.y)
        Xm, ym = tt(meta.X), torch.tensor(meta.y)
        tphi, tth, tM, tV = tt(phi), tt(st["theta"]), tt(st["M"]), tt(st["V"])
        tb = [torch.tensor(b.astype(np.int64)) for b in batches]
        tmb = [torch.tensor(b.astype(np.int64)) for b in mbatches]
        run_steps = getattr(_core, f"lopt_run_steps_{dt_name}")

        # --- agreement on the same minibatches
        ours = run_steps(SIZES, phi, train.X, train.y, st["theta"], st["M"], st["V"], st["step"], args.steps, B, seed)
        th_t, _, _ = ref.inner_steps(tphi, tth, tM, tV, st["step"], X, y, tb[:args.steps])
        mg = learned.meta_gradient(phi, train, meta, length=T, state=st, meta_batch=B, seed=seed, dtype=dt_name)
        J_t, g_t = ref.meta_gradient(tphi, tth, tM, tV, st["step"], X, y, Xm, ym, tb[:T], tmb)
        agreement[dt_name] = {
            "inner_steps_theta_rel_diff": float(np.max(np.abs(ours["theta"] - th_t.numpy())) /
                                                np.max(np.abs(th_t.numpy()))),
            "meta_loss_rel_diff": abs(mg.meta_loss - J_t) / abs(J_t),
            "meta_gradient_rel_diff": float(np.max(np.abs(mg.grad - g_t.numpy())) / np.max(np.abs(g_t.numpy()))),
        }

        # --- timings
        t_ours = _median_time(lambda: run_steps(SIZES, phi, train.X, train.y, st["theta"], st["M"], st["V"],
                                                st["step"], args.steps, B, seed), args.repeats) / args.steps
        t_torch = _median_time(lambda: ref.inner_steps(tphi, tth, tM, tV, st["step"], X, y, tb[:args.steps]),
                               args.repeats) / args.steps
        rows.append({"unit": "inner_step", "dtype": dt_name, "metastep_s": t_ours, "torch_s": t_torch,
                     "ratio_torch_over_metastep": t_torch / t_ours})
        t_ours = _median_time(lambda: learned.meta_gradient(phi, train, meta, length=T, state=st, meta_batch=B,
                                                            seed=seed, dtype=dt_name), args.repeats)
        t_torch = _median_time(lambda: ref.meta_gradient(tphi, tth, tM, tV, st["step"], X, y, Xm, ym, tb[:T], tmb),
                               args.repeats)
        rows.append({"unit": f"meta_gradient_T{T}", "dtype": dt_name, "metastep_s": t_ours, "torch_s": t_torch,
                     "ratio_torch_over_metastep": t_torch / t_ours})

    print(f"learned-optimizer benchmark: {SIZES} network, batch {B}, threads {args.threads}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("agreement with the PyTorch implementation (same minibatches):")
    for k, v in agreement.items():
        print(f"  {k}: " + ", ".join(f"{a} {b:.2e}" for a, b in v.items()))
    print(f"{'unit':<20}{'dtype':<9}{'metastep':>12}{'torch':>12}{'torch/ours':>12}")
    for r in rows:
        print(f"{r['unit']:<20}{r['dtype']:<9}{r['metastep_s'] * 1e3:>10.3f}ms{r['torch_s'] * 1e3:>10.3f}ms"
              f"{r['ratio_torch_over_metastep']:>11.2f}x")
    with open(args.out, "w") as fh:
        json.dump({"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "sizes": SIZES,
                   "batch": B, "length": T, "agreement": agreement, "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
