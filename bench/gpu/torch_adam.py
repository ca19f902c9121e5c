#!/usr/bin/env python3
"""KOALA (through libkoala's C ABI, ctypes) vs torch's fused Adam, same GPU,
same run, same layouts as koala_gpu_bench: the CIFAR-10 ResNet-18 (62
tensors, 11.2M float32 parameters, read from bench/cpu/resnet18_layout.h)
and 64 tensors of 2^24 (1.07B parameters).

Usage: torch_adam.py LIBKOALA_SO [--steps N] [--layout resnet18|1b|all]

Prints, per layout: the device-to-device copy bandwidth (torch copy_,
bytes read + written), then ms per step and the ratio to the byte floor
(ALGORITHM.md §10: Adam 28 B/param, KOALA-V 20, KOALA-M 56) for
torch.optim.Adam(fused=True).step() and for koala_predict +
koala_update_ptr on the tensors' data_ptr()s on torch's current stream.
Exits 77 when torch sees no GPU.
"""
import argparse
import ctypes
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class KoalaConfig(ctypes.Structure):
    # Field order of koala_config in include/koala.h.
    _fields_ = [("struct_size", ctypes.c_size_t), ("method", ctypes.c_int)] + [
        (name, ctypes.c_double)
        for name in ("lr", "weight_decay", "r", "alpha_r", "sigma", "q",
                     "sw", "sc", "sv", "a", "qw", "qv")
    ]


def resnet18_sizes():
    text = open(os.path.join(HERE, "..", "cpu", "resnet18_layout.h")).read()
    sizes = []
    for m in re.finditer(r'CONV\("[^"]+", (\d+), (\d+), (\d+)\)|BN\("[^"]+", (\d+)\)|'
                         r'\{"linear\.weight", \{(\d+), (\d+), 0, 0\}\}|'
                         r'\{"linear\.bias", \{(\d+), 0, 0, 0\}\}', text):
        g = m.groups()
        if g[0]:
            sizes.append(int(g[0]) * int(g[1]) * int(g[2]) * int(g[2]))
        elif g[3]:
            sizes += [int(g[3]), int(g[3])]
        elif g[4]:
            sizes.append(int(g[4]) * int(g[5]))
        else:
            sizes.append(int(g[6]))
    assert len(sizes) == 62 and sum(sizes) == 11173962, (len(sizes), sum(sizes))
    return sizes


def timed(torch, fn, steps):
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("libkoala")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--layout", default="all")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("SKIP: torch is not installed")
        return 77
    if not torch.cuda.is_available():
        print("SKIP: torch sees no GPU")
        return 77

    lib = ctypes.CDLL(args.libkoala)
    lib.koala_last_error.restype = ctypes.c_char_p
    lib.koala_create.argtypes = [ctypes.POINTER(KoalaConfig), ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_void_p)]
    for name in ("koala_predict", "koala_update_ptr", "koala_destroy"):
        getattr(lib, name).restype = ctypes.c_int if name != "koala_destroy" else None

    def check(status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {lib.koala_last_error().decode()}")

    layouts = []
    if args.layout in ("all", "resnet18"):
        layouts.append(("resnet18", resnet18_sizes()))
    if args.layout in ("all", "1b"):
        layouts.append(("1b", [1 << 24] * 64))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for name, sizes in layouts:
        total = sum(sizes)
        a = torch.empty(total, device="cuda")
        b = torch.empty_like(a)
        ms = timed(torch, lambda: b.copy_(a), 20)
        bw = 2 * 4 * total / (ms * 1e-3)
        del a, b
        print(f"{name:9s} copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")

        def floor_ms(bytes_per_param):
            return bytes_per_param * total / bw * 1e3

        params = [torch.randn(s, device="cuda") for s in sizes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        adam = torch.optim.Adam(params, lr=1e-3, weight_decay=5e-4, fused=True)
        ms = timed(torch, adam.step, args.steps)
        print(f"{name:9s} torch Adam(fused=True) {ms:8.3f} ms/step, floor (28 B/param) "
              f"{floor_ms(28):.3f} ms, ratio {ms / floor_ms(28):.2f}")
        del adam

        n = len(sizes)
        c_sizes = (ctypes.c_size_t * n)(*sizes)
        xs = (ctypes.c_void_p * n)(*[p.data_ptr() for p in params])
        gs = (ctypes.c_void_p * n)(*[p.grad.data_ptr() for p in params])
        loss = torch.tensor([1.0, 1.2], device="cuda", dtype=torch.float32)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        for method, label, bpp in ((1, "KOALA-V", 20), (2, "KOALA-M", 56)):
            cfg = KoalaConfig()
            lib.koala_config_init(ctypes.byref(cfg), method)
            cfg.weight_decay = 5e-4
            opt = ctypes.c_void_p()
            check(lib.koala_create(ctypes.byref(cfg), n, c_sizes, 1, 2, ctypes.byref(opt)),
                  "koala_create")

            def step():
                check(lib.koala_predict(opt, xs, stream), "koala_predict")
                check(lib.koala_update_ptr(opt, ctypes.c_void_p(loss.data_ptr()),
                                           ctypes.c_void_p(loss.data_ptr() + 4), 1, xs, gs,
                                           stream), "koala_update_ptr")

            ms = timed(torch, step, args.steps)
            print(f"{name:9s} libkoala {label} {ms:8.3f} ms/step, floor ({bpp} B/param) "
                  f"{floor_ms(bpp):.3f} ms, ratio {ms / floor_ms(bpp):.2f}")
            lib.koala_destroy(opt)
        del params
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
