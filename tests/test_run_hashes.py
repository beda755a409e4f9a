"""Pinned run hashes: the run store's directory names (``<kind>_<hash>``, an analysis's branch)
of one run of each kind, built from requests on the cifar10 preset without opening any data.
A reshaping of the request layer must leave every one unchanged, or every existing run store
would be orphaned. A change here is a change of what a run *is*: say so, never just re-pin.

    python -m pytest -q tests/test_run_hashes.py
"""

from __future__ import annotations

import pytest

from lthfast import api
from lthfast.runs import hash_of

RANDOM = dict(dataset="cifar10", subset="random", size=1000, subset_seed=3)
TRAIN_SIZE = 50_000  # cifar10's train split: warmup's schedule length depends on it


def keys(command: str, **values) -> dict[str, str]:
    """The run-store names a request's runs get (only random/all subsets: no data needed)."""
    from lthfast.experiments.analyses.grads import GradsConfig
    from lthfast.experiments.analyses.lmc import LmcConfig

    req, _ = api.request_from(command, values)
    if command == "scores":
        cfg = req.config()
        return {"score": f"{cfg.score}_{hash_of(cfg)}"}
    if values.get("subset") in ("easy", "hard"):  # the scores that rank it (its runs need them)
        cfg = req.score_request().config()
        return {"score": f"{cfg.score}_{hash_of(cfg)}"}
    spec = req.subset_spec()
    if command == "warmup":
        return {"warmup": hash_of(req.warmup_config(TRAIN_SIZE, spec.identity()))}
    cfg = req.config(spec.identity())
    out = {"pretrain": hash_of(cfg.pretrain)}
    if command == "imp":
        out["imp"] = hash_of(cfg)
    elif command == "lmc":
        out["branch"] = LmcConfig(recipe=cfg.recipe, start=cfg.pretrain.recipe.steps,
                                  children=req.children, alphas=req.alpha_values(),
                                  level=req.level, seed=req.seed, bn=req.bn).branch
        out["imp"] = hash_of(cfg)
    elif command == "errors":
        out["imp"] = hash_of(cfg)
    elif command == "grads":
        out["branch"] = GradsConfig(req.coherence_every, req.coherence_batches,
                                    req.eval_every).branch
    return out


# (command, flags as a sweep file or the CLI gives them, the run-store names they must get).
# Re-pinned on purpose once (issue #21): LMC barriers gained the BN kind (``bn``, default the
# authors' "average", hashed so old recomputed-BN barriers never mix with new ones in a table) —
# lmc branches and lmc scores; grads branches gained a format version (its arrays changed
# meaning: accuracies of w_{t_r}, probe seeds under --seed). Every other pin is unchanged.
CASES = [
    ("imp", dict(dataset="cifar10"), {"pretrain": "b0da75470f4f", "imp": "f81f3b486a4e"}),
    ("imp", dict(RANDOM, steps=200, levels=3, replicates=2, lr=0.2, pretrain_lr=0.05,
                 train_steps=9000, label_noise=0.1, noise_seed=2, batch_size=256, seed=1),
     {"pretrain": "2e5367ff2c59", "imp": "66b00635096e"}),
    ("imp", dict(dataset="cifar10", subset="easy", size=1000, score_models=4, score_steps=300),
     {"score": "el2n_b6700ba0630b"}),
    ("scores", dict(dataset="cifar10", kind="el2n"), {"score": "el2n_aed86b1eb704"}),
    ("scores", dict(dataset="cifar10", kind="forgetting", models=4, steps=300, seed=2),
     {"score": "forgetting_47bb0e3b6cf0"}),
    ("scores", dict(dataset="cifar10", kind="lmc", children=3, pretrain_lr=0.05, models=2),
     {"score": "lmc_483a10410dcf"}),
    ("lmc", dict(dataset="cifar10"),
     {"pretrain": "b0da75470f4f", "branch": "lmc_fe9601d0911e", "imp": "f81f3b486a4e"}),
    ("lmc", dict(RANDOM, steps=500, children=3, alphas="0.25,0.5", level=2, seed=1),
     {"pretrain": "f45a8d1e682b", "branch": "lmc_6438ab594f03", "imp": "eec79892bcb3"}),
    ("errors", dict(RANDOM, steps=500), {"pretrain": "71bdc54e44b2", "imp": "0acba4767583"}),
    ("errors", dict(RANDOM, steps=500, level=1),
     {"pretrain": "71bdc54e44b2", "imp": "0acba4767583"}),
    ("grads", dict(RANDOM, steps=300, coherence_every=5, coherence_batches=8, eval_every=50),
     {"pretrain": "1043edeeaca5", "branch": "grads_48b6d3bca8ce"}),
    ("warmup", dict(dataset="cifar10"), {"warmup": "1bdc1ed5c150"}),
    ("warmup", dict(dataset="cifar10", subset="random", size=5000, warmup=100, replicates=2),
     {"warmup": "a6d0b6d625f5"}),
]


@pytest.mark.parametrize("command,values,expected", CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_run_hashes_are_pinned(command, values, expected):
    assert keys(command, **values) == expected
