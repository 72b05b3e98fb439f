"""Fingerprints, seeding and schedules: small pieces the exact-resume work stands on."""

from __future__ import annotations

import os

import torch

from framework.runs import reproducibility
from framework.runs.reproducibility import apply_determinism, fingerprint, pick_num_threads
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
    machine = reproducibility.machine_threads()
    try:
        strict = apply_determinism("strict", 1)
        assert strict["deterministic_algorithms"] and strict["cudnn_deterministic"]
        assert strict["num_threads"] == torch.get_num_threads() == 1
        # The next job of a sweep must not inherit strict, nor its thread count.
        seeded = apply_determinism("seeded", machine)
        assert not seeded["deterministic_algorithms"] and not seeded["cudnn_benchmark"]
        assert seeded["num_threads"] == torch.get_num_threads() == machine
        assert apply_determinism("off", machine)["cudnn_benchmark"]
    finally:
        apply_determinism("seeded", machine)


def test_the_thread_count_is_set_then_recorded_then_the_machines():
    assert pick_num_threads(3, 2) == (3, "determinism.num_threads")
    assert pick_num_threads(None, 2) == (2, "as the checkpoint ran")
    # Not torch's current count, which a launcher may have lowered: the CPUs this process may use.
    torch.set_num_threads(1)
    try:
        assert pick_num_threads(None, None)[0] == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(reproducibility.machine_threads())


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
