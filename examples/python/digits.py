"""Train a small PyTorch MLP on scikit-learn's digits with libkoala's KOALA-V,
KOALA-M and KOALA++ (through koala.torch, the drop-in classes) and with
torch's SGD and Adam; 3 seeds each; print a table and save the loss curves.

    .venv/torch/bin/python examples/python/digits.py [--epochs 30] [--seeds 3] [--out out]

Setup (the official train.py's, where it carries over to this small data set):
per-sample cross-entropy (reduction='none'), loss_var = mean(l^2), batch 128
with drop_last, weight decay 5e-4 for every optimizer, KOALA-V with sigma 0.1,
KOALA-M and KOALA++ with the class defaults, SGD lr 0.01 momentum 0.9 (train.py's
defaults), Adam with torch's default lr 1e-3; no lr schedule. Data: the 1797
8x8 images scaled to [0, 1]; sample i is a test sample when i % 5 == 4 (1438
train / 359 test, the split of examples/c/digits.c). Evaluation happens after
update(), on the posterior weights.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from koala.torch import KOALAPlusPlus, MomentumKOALA, VanillaKOALA

WEIGHT_DECAY = 5e-4
OPTIMIZERS = {
    "KOALA-V": lambda p: VanillaKOALA(p, sigma=0.1, weight_decay=WEIGHT_DECAY),
    "KOALA-M": lambda p: MomentumKOALA(p, weight_decay=WEIGHT_DECAY),
    "KOALA++": lambda p: KOALAPlusPlus(p, weight_decay=WEIGHT_DECAY),
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=WEIGHT_DECAY),
    "Adam": lambda p: torch.optim.Adam(p, weight_decay=WEIGHT_DECAY),
}


def load_data():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    test = torch.arange(len(y)) % 5 == 4
    return (x[~test], y[~test]), (x[test], y[test])


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def train_epoch(model, opt, x, y, batch, gen, is_koala):
    """One epoch of the official training loop; returns the mean minibatch loss."""
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    order = torch.randperm(len(y), generator=gen)
    total, count = 0.0, 0
    model.train()
    for start in range(0, len(y) - batch + 1, batch):          # drop_last=True
        idx = order[start:start + batch]
        if is_koala:
            opt.predict()
        loss = criterion(model(x[idx]), y[idx])
        loss_mean = loss.mean()
        opt.zero_grad()
        loss_mean.backward()
        if is_koala:
            opt.update(loss_mean, torch.mean(torch.pow(loss, 2)))
        else:
            opt.step()
        total += float(loss_mean)
        count += 1
    return total / count


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return float((model(x).argmax(1) == y).float().mean()) * 100.0


def run(name, seed, data, epochs, batch, progress):
    (x_tr, y_tr), (x_te, y_te) = data
    model = make_model(seed)
    opt = OPTIMIZERS[name](model.parameters())
    gen = torch.Generator().manual_seed(1000 + seed)
    losses, seconds = [], 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses.append(train_epoch(model, opt, x_tr, y_tr, batch, gen, name.startswith("KOALA")))
        seconds += time.perf_counter() - t0
        progress(name, seed, epoch + 1, losses[-1])
    return losses, accuracy(model, x_te, y_te), seconds / epochs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default="out", help="folder for the PNG (created if missing)")
    args = ap.parse_args(argv)
    # Tiny matrices: one thread is fastest (and kind to a shared machine).
    torch.set_num_threads(1)
    data = load_data()
    total_runs = len(OPTIMIZERS) * args.seeds
    done = [0]

    def progress(name, seed, epoch, loss):
        frac = (done[0] + epoch / args.epochs) / total_runs
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  {name:<7} seed {seed} "
                         f"epoch {epoch:>3}/{args.epochs} loss {loss:.4f}")
        sys.stderr.flush()

    results = {}
    for name in OPTIMIZERS:
        for seed in range(1, args.seeds + 1):
            results.setdefault(name, []).append(run(name, seed, data, args.epochs,
                                                    args.batch_size, progress))
            done[0] += 1
    sys.stderr.write("\n")

    print(f"digits: {len(data[0][1])} train / {len(data[1][1])} test, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.seeds} seeds")
    print("| optimizer | test accuracy | final train loss | time per epoch |")
    print("|-----------|---------------|------------------|----------------|")
    for name, runs in results.items():
        accs = [r[1] for r in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        final = statistics.mean(r[0][-1] for r in runs)
        per_epoch = statistics.mean(r[2] for r in runs)
        print(f"| {name:<9} | {statistics.mean(accs):5.1f} ± {std:3.1f} % | {final:16.4f} | "
              f"{per_epoch * 1000:11.1f} ms |")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "python-digits-loss.png")
    plot(results, args.epochs, path)
    print(f"loss curves: {path}")
    return 0


def plot(results, epochs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, epochs + 1)
    for name, runs in results.items():
        curves = np.array([r[0] for r in runs])
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (cross-entropy)")
    ax.set_title("digits, MLP 64-32-10: mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
