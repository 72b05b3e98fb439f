"""Fingerprints, seeding and schedules: small pieces the exact-resume work stands on."""

from __future__ import annotations

import torch

from framework import reproducibility
from framework.reproducibility import apply_determinism, fingerprint
from framework.schedulers import WarmupCosine


def test_fingerprint_sees_every_bit_and_ignores_dict_order():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0), "step": 4}
    assert fingerprint(a) == fingerprint({"step": 4, "b": torch.tensor(3.0), "w": torch.tensor([1.0, 2.0])})
    nudged = {**a, "w": torch.nextafter(a["w"], torch.tensor(3.0))}  # one ulp up
    assert fingerprint(nudged) != fingerprint(a)
    assert fingerprint({**a, "w": a["w"].double()}) != fingerprint(a)  # dtype counts
    assert fingerprint({**a, "step": 5}) != fingerprint(a)


def test_determinism_settings_are_set_both_ways(monkeypatch):
    # The PYTHONHASHSEED check strict makes has tests of its own (test_sweeps.py); here, the flags.
    monkeypatch.setattr(reproducibility, "hash_seed_in_force", lambda: True)
    try:
        strict = apply_determinism("strict")
        assert strict["deterministic_algorithms"] and strict["cudnn_deterministic"]
        seeded = apply_determinism("seeded")  # the next job of a sweep must not inherit strict
        assert not seeded["deterministic_algorithms"] and not seeded["cudnn_benchmark"]
        assert apply_determinism("off")["cudnn_benchmark"]
    finally:
        apply_determinism("seeded")


def test_warmup_cosine_warms_up_then_decays_to_the_floor():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == sorted(lrs[:5]) and lrs[0] > 0 and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == 0.1
