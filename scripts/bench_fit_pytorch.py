#!/usr/bin/env python3
"""The same HDMoE training step as benches/fit.rs, in PyTorch eager, for `make bench`'s speed
comparison on the same machine: full-size model (WSI + genomics, d = 256, BLCA's genomic
groups), forward + backward + Adam(weight_decay) per patient, bags of 1k/5k/20k patches, token
length 64 and 256. Written from ../shared/docs/MODEL_SPEC.md (a timing reference, not a port of
the authors' code; the modules and their sizes are the same as ours).

benches/fit.rs runs it between its own rounds when HDMOE_BENCH_TORCH_PYTHON names a Python with
torch (`make bench` passes the project's venv); alone: .venv/bin/python scripts/bench_fit_pytorch.py [--device cuda]
"""
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def pinv(x, iters=6):
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(-1).max() * abs_x.sum(-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class Nystrom(nn.Module):
    def __init__(self, dim=256, heads=8, m=128):
        super().__init__()
        self.h, self.d, self.m = heads, dim // heads, m
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.res = nn.Conv2d(heads, heads, (33, 1), padding=(16, 0), groups=heads, bias=False)

    def forward(self, x):
        b, n, dim = x.shape
        l = math.ceil(n / self.m)
        pad = l * self.m - n
        if pad:
            x = F.pad(x, (0, 0, pad, 0))
        q, k, v = (t.view(b, -1, self.h, self.d).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        q = q * self.d ** -0.5
        ql = q.reshape(b, self.h, self.m, l, self.d).sum(3) / l
        kl = k.reshape(b, self.h, self.m, l, self.d).sum(3) / l
        a1 = (q @ kl.transpose(-1, -2)).softmax(-1)
        a2 = (ql @ kl.transpose(-1, -2)).softmax(-1)
        a3 = (ql @ k.transpose(-1, -2)).softmax(-1)
        out = (a1 @ pinv(a2)) @ (a3 @ v) + self.res(v)
        out = F.dropout(self.out(out.transpose(1, 2).reshape(b, -1, dim)), 0.1, self.training)
        return out[:, -n:]


class Layer(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(dim), Nystrom(dim)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class Ppeg(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x, side):
        cls, t = x[:, :1], x[:, 1:]
        m = t.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        m = m + sum(c(m) for c in self.convs)
        return torch.cat([cls, m.flatten(2).transpose(1, 2)], 1)


class Expert(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.f1, self.f2 = nn.Linear(i, 128), nn.Linear(128, o)

    def forward(self, x):
        return F.relu(self.f2(F.dropout(F.relu(self.f1(x)), 0.1, self.training)))


class Moe(nn.Module):
    def __init__(self, i, o, e=8):
        super().__init__()
        self.experts = nn.ModuleList(Expert(i, o) for _ in range(e))
        self.shared = Expert(i, o)
        self.router = nn.Linear(i, e, bias=False)
        self.o = o

    def forward(self, u):
        p = self.router(u).softmax(-1)
        top, idx = p.topk(1, -1)
        routed = u.new_zeros(u.shape[0], self.o)
        for e, expert in enumerate(self.experts):
            rows = (idx[:, 0] == e).nonzero().flatten()
            if len(rows):
                routed = routed.index_add(0, rows, expert(u[rows]) * top[rows])
        counts = torch.bincount(idx[:, 0], minlength=len(self.experts)).float()
        lb = (counts * len(self.experts) / u.shape[0] * p.mean(0)).sum()
        return routed.flatten(), self.shared(u).flatten(), lb


def rfr(vectors, s):
    v = torch.stack(vectors)
    return v.view(len(vectors), s, -1).transpose(0, 1).flatten()


class Hdmoe(nn.Module):
    def __init__(self, groups, g, d=256):
        super().__init__()
        self.g = g
        self.fc = nn.Sequential(nn.Linear(1024, d), nn.ReLU(), nn.Dropout(0.25), nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.25))
        self.cls_p, self.cls_g = nn.Parameter(torch.randn(1, 1, d) * 1e-6), nn.Parameter(torch.randn(1, 1, d) * 1e-6)
        self.p1, self.p2, self.ppeg, self.pn = Layer(d), Layer(d), Ppeg(d), nn.LayerNorm(d)
        self.snn = nn.ModuleList(
            nn.Sequential(nn.Linear(n, 1024), nn.ELU(), nn.AlphaDropout(0.25), nn.Linear(1024, d), nn.ELU(), nn.AlphaDropout(0.25))
            for n in groups
        )
        self.g1, self.g2, self.gn = Layer(d), Layer(d), nn.LayerNorm(d)
        self.m1, self.m2, self.mf = Moe(g, g), Moe(g, g), Moe(g, g // 2)
        self.a, self.b = nn.Linear(2 * d, 2 * d), nn.Linear(2 * d, 2 * d)
        self.head = nn.Linear(4 * d, 4)

    def forward(self, bag, genes, s1, s2):
        h = self.fc(bag).unsqueeze(0)
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        h = torch.cat([self.cls_p, h, h[:, : side * side - n]], 1)
        vp = self.pn(self.p2(self.ppeg(self.p1(h), side)))[0, 0]
        t = torch.stack([m(x) for m, x in zip(self.snn, genes)]).unsqueeze(0)
        vg = self.gn(self.g2(self.g1(torch.cat([self.cls_g, t], 1))))[0, 0]
        rg, sg, l1 = self.m1(vg.view(-1, self.g))
        rp, sp, l2 = self.m2(vp.view(-1, self.g))
        a_spec, a_share = self.a(torch.cat([rg, rp])), self.b(torch.cat([sg, sp]))
        rf, sf, l3 = self.mf(rfr([rg, rp, sg, sp], s1).view(-1, self.g))
        logits = self.head(rfr([rf, sf], s2))
        cos = lambda a, b: F.cosine_similarity(a, b, dim=0)
        dec = cos(rg, sg) + cos(rp, sp) + cos(rf, sf) + (1 - cos(rf, a_spec)) + (1 - cos(sf, a_share))
        return logits, dec, l1 + l2 + l3


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    device = torch.device(parser.parse_args().device)
    torch.manual_seed(0)
    groups = [94, 334, 521, 468, 1496, 479]
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"| training step ({on}) | token length | patches | median seconds / patient |")
    print("|---|---:|---:|---:|")
    for g in (64, 256):
        model = Hdmoe(groups, g).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
        for n in (1000, 5000, 20000):
            bag, genes = torch.randn(n, 1024, device=device), [torch.randn(c, device=device) for c in groups]
            reps, times = (3 if n >= 20000 else 5), []
            for r in range(reps + 1):
                start = time.perf_counter()
                logits, dec, lb = model(bag, genes, 4, 8)
                h = logits.sigmoid()
                s = torch.cumprod(1 - h, 0)
                loss = -(torch.log(s[0].clamp(min=1e-7)) + torch.log(h[1].clamp(min=1e-7))) + dec + 0.01 * lb
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # waits for the device
                if r:
                    times.append(time.perf_counter() - start)
            print(f"| PyTorch {torch.__version__} eager | {g} | {n} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
