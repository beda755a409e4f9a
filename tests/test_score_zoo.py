"""The score zoo (``lthfast/experiments/scorers/``, ``score_compare``, ``ccs`` subsets).

GraNd: the batched ``torch.func`` per-example gradient norms equal a plain one-example-at-a-time
autograd loop on a small trained network (BatchNorm in eval mode), and the ensemble's saved
values equal that reference from the members' saved weights. AUM and the training loss: the
hook's means equal a plain re-computation from the logits logged during the same training.
GraNd and AUM: K members packed give the bytes of each member trained alone. Prediction
variance: the hook's running spread equals numpy's std over the stored checkpoint
probabilities. CCS: the hard cutoff, the budget, coverage of sparse strata, class balance.
``scores compare`` on digits: self-correlation 1, EL2N–GraNd at the same step clearly positive.

    python -m pytest -q tests/test_score_zoo.py
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lthfast.config import Recipe
from lthfast.data.loader import DeviceData
from lthfast.data.subsets import SubsetSpec, coverage_centric, make_subset
from lthfast.errors import UserError
from lthfast.experiments.common import Context, Runtime, new_model
from lthfast.experiments.score_compare import (average_ranks, compare, imp_by_score_rows,
                                               spearman)
from lthfast.experiments.scorers.aum import margin
from lthfast.experiments.scorers.grand import example_gradient_norms
from lthfast.experiments.scorers.pred_var import CheckpointProbabilities, checkpoint_steps
from lthfast.experiments.scorers.train_loss import example_loss
from lthfast.experiments.scores import (SCORES, PresentationMean, ScoreConfig, compute_scores,
                                        train_members)
from lthfast.models import build
from lthfast.train import checkpoint as ckpt
from lthfast.train.hooks import Hook


def context(digits, out):
    return Context(Runtime(out=out, device="cpu", checkpoint_every=0, progress=None), digits)


def config(score: str, steps: int, models: int = 2, batch: int = 32,
           dataset: str = "digits") -> ScoreConfig:
    return ScoreConfig(score=score, dataset=dataset,
                       recipe=Recipe("resnet8", batch, 0.1, (), steps), models=models)


# ---------------------------------------------------------------------------------------------
# GraNd
# ---------------------------------------------------------------------------------------------


def reference_gradient_norms(net, x, y) -> np.ndarray:
    """One example at a time, plain autograd, eval-mode BatchNorm."""
    net.eval()
    out = []
    for i in range(len(y)):
        net.zero_grad()
        loss = F.cross_entropy(net(x[i : i + 1]).reshape(1, -1), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(net.parameters()))
        out.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item())
    return np.array(out)


def test_grand_equals_a_one_example_at_a_time_autograd_reference(synthetic, tmp_path):
    """From an ensemble member trained 6 steps (BatchNorm running statistics moved off their
    initial values), for 48 examples: the batched norms, and the member's saved grand.npy."""
    path = compute_scores(context(synthetic, tmp_path), config("grand", 6, dataset="synthetic"))
    run = path.parent
    data = DeviceData.from_dataset(synthetic, "train", "cpu")
    x, y = data.eval_batch(0, 48, 1)
    per_member = []
    for m in range(2):
        net = build("resnet8", 4, k=1)
        net.load_state_dict(ckpt.load(run / f"replicate_{m}" / "weights.pt"))
        assert not torch.all(net.stem_bn.running_mean == 0)  # trained: real running statistics
        expected = reference_gradient_norms(net, x, y)  # float32, as the ensemble computes
        saved = np.load(run / f"replicate_{m}" / "grand.npy")
        np.testing.assert_allclose(saved[:48], expected, rtol=1e-4)  # float32 sums differ
        # float64: the batched and the one-at-a-time gradients agree to float tolerance
        net64 = net.double()
        np.testing.assert_allclose(example_gradient_norms(net64, x.double(), y).numpy(),
                                   reference_gradient_norms(net64, x.double(), y), rtol=1e-10)
        net.float()
        per_member.append(saved)
        assert expected.std() > 0.05 * expected.mean()  # the norms differ between examples
    np.testing.assert_allclose(np.load(path), np.mean(per_member, axis=0), rtol=1e-6)


def test_grand_defaults_to_initialisation():
    from lthfast.config import PRESETS

    kind = SCORES["grand"]
    assert kind.min_steps == 0 and kind.default_steps(PRESETS["cifar10"]) == 0
    assert kind.easy == "low" and SCORES["aum"].easy == "high"


def test_grand_at_step_0_is_the_untrained_networks(synthetic, tmp_path):
    from lthfast.experiments.common import SCORE_SEEDS, replicate_seeds

    path = compute_scores(context(synthetic, tmp_path),
                          config("grand", 0, models=1, dataset="synthetic"))
    state = ckpt.load(path.parent / "replicate_0" / "weights.pt")
    fresh = build("resnet8", 4, k=1)
    fresh.reset_parameters([replicate_seeds(0, 0, SCORE_SEEDS)["init"]])
    assert torch.equal(state["stem.weight"], fresh.stem.weight.detach())
    data = DeviceData.from_dataset(synthetic, "train", "cpu")
    x, y = data.eval_batch(0, 16, 1)
    np.testing.assert_allclose(np.load(path)[:16], reference_gradient_norms(fresh, x, y),
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# AUM and the training loss: hooks on the training logits
# ---------------------------------------------------------------------------------------------


class Recorder(Hook):
    """Logs every training batch's logits, labels and indices (what the step computed)."""

    def __init__(self):
        self.batches = []

    def on_batch(self, step, logits, labels, indices):
        self.batches.append((logits.clone(), labels.clone(), indices.clone()))


def plain_means(batches, k, n, value) -> np.ndarray:
    """Per model and example, the mean over presentations of value(logit row, label), in
    plain Python; NaN where never drawn."""
    sums, counts = np.zeros((k, n)), np.zeros((k, n))
    for logits, labels, indices in batches:
        for b in range(labels.shape[0]):
            for m in range(k):
                e = int(indices[b, m])
                sums[m, e] += value(logits[b, m].double().tolist(), int(labels[b, m]))
                counts[m, e] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plain_margin(row, label):
    return row[label] - max(v for c, v in enumerate(row) if c != label)


def plain_loss(row, label):
    top = max(row)
    return -(row[label] - top - np.log(sum(np.exp(v - top) for v in row)))


@pytest.mark.parametrize("score,value,hardest", [("aum", plain_margin, np.nanmin),
                                                  ("train_loss", plain_loss, np.nanmax)])
def test_presentation_scores_equal_a_plain_recomputation_from_logged_logits(
        score, value, hardest, digits, tmp_path, monkeypatch):
    """30 steps of batch 32 draw fewer than all 1,438 examples: the undrawn score as the
    model's hardest value (and a warning says so)."""
    recorder = Recorder()
    kind = SCORES[score]
    monkeypatch.setitem(SCORES, score, dataclasses.replace(
        kind, hooks=lambda ctx, cfg, data, k: [*kind.hooks(ctx, cfg, data, k), recorder]))
    path = compute_scores(context(digits, tmp_path), config(score, 30))
    assert len(recorder.batches) == 30
    expected = plain_means(recorder.batches, 2, digits.train_size, value)
    assert np.isnan(expected).any()  # some never drawn
    filled = np.where(np.isnan(expected), hardest(expected, axis=1, keepdims=True), expected)
    for m in range(2):
        saved = np.load(path.parent / f"replicate_{m}" / f"{score}.npy")
        np.testing.assert_allclose(saved, filled[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(path), filled.mean(0), rtol=1e-5, atol=1e-5)
    assert np.load(path).std() > 0.1


def test_presentation_mean_counts_repeats_within_a_batch():
    hook = PresentationMean(1, 3, torch.device("cpu"), margin)
    logits = torch.tensor([[[2.0, 0.0, 1.0]], [[0.0, 3.0, 1.0]], [[5.0, 1.0, 0.0]]])  # B=3, K=1
    y = torch.tensor([[0], [0], [1]])
    idx = torch.tensor([[0], [0], [2]])  # example 0 twice
    hook.on_batch(0, logits, y, idx)
    # example 0: margins 2 - 1 = 1 and 0 - 3 = -3 -> mean -1; example 2: 1 - 5 = -4; 1 never
    out = hook.per_model("min", "aum")
    assert out.tolist() == [[-1.0, -4.0, -4.0]]
    assert torch.allclose(example_loss(logits, y)[:, 0],
                          torch.tensor([plain_loss(r[0].tolist(), int(t)) for r, t in
                                        zip(logits, y[:, 0])], dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# packed == separate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score,steps", [("grand", 3), ("aum", 12)])
def test_members_packed_equal_members_trained_alone(score, steps, synthetic, tmp_path):
    cfg = config(score, steps, dataset="synthetic")  # 12 steps of 32: every example drawn
    packed = np.load(compute_scores(context(synthetic, tmp_path / "packed"), cfg))
    ctx = context(synthetic, tmp_path / "alone")
    run = ctx.store.run(score, cfg).create()
    train_members(ctx, cfg, run, [1])  # member 1 alone first ...
    alone = compute_scores(ctx, cfg)  # ... then the run trains member 0 alone
    for m in range(2):
        a = np.load(tmp_path / "packed" / run.name / f"replicate_{m}" / f"{score}.npy")
        b = np.load(run.path / f"replicate_{m}" / f"{score}.npy")
        assert a.tobytes() == b.tobytes(), m
    assert np.load(alone).tobytes() == packed.tobytes()


# ---------------------------------------------------------------------------------------------
# prediction variance across checkpoints
# ---------------------------------------------------------------------------------------------


def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert checkpoint_steps(100) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert checkpoint_steps(4) == [1, 2, 3, 4]  # fewer steps than checkpoints: each once
    assert checkpoint_steps(15, 3) == [5, 10, 15]


def test_pred_var_hook_equals_numpy_std_over_the_checkpoints(digits):
    data = DeviceData.from_dataset(digits, "train", "cpu")
    model = new_model("resnet8", 10, [3, 4], torch.device("cpu"))
    hook = CheckpointProbabilities(2, data, steps=3)
    from lthfast.train.evaluate import predict

    probs = []
    for t in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        hook.after_backward(t, model)
        logits = predict(model, data)
        probs.append(logits.softmax(-1).gather(-1, data.labels.view(1, -1, 1).expand(2, -1, 1))
                     .squeeze(-1).double().numpy())
        hook.after_backward(0, model)  # not a checkpoint step: nothing happens
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    final = hook.per_model(model)  # step 3 = the end: the trained weights
    probs.append(predict(model, data).softmax(-1).gather(
        -1, data.labels.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1).double().numpy())
    np.testing.assert_allclose(final, np.std(probs, axis=0), rtol=1e-9, atol=1e-12)
    assert final.mean() > 1e-3


# ---------------------------------------------------------------------------------------------
# subsets: direction and coverage-centric selection
# ---------------------------------------------------------------------------------------------


def test_easy_means_high_for_aum_and_low_for_el2n(digits, tmp_path):
    scores = np.random.default_rng(0).random(digits.train_size)
    path = tmp_path / "s.npy"
    np.save(path, scores)
    low = make_subset(digits, SubsetSpec(kind="easy", size=50, scores=str(path)))
    high = make_subset(digits, SubsetSpec(kind="easy", size=50, scores=str(path), easy_high=True))
    assert set(low) == set(np.argsort(scores)[:50])
    assert set(high) == set(np.argsort(-scores)[:50])
    hard_high = make_subset(digits, SubsetSpec(kind="hard", size=50, scores=str(path),
                                               easy_high=True))
    assert set(hard_high) == set(low)
    # the direction is part of the subset's identity, left out when at its default
    assert "easy" not in SubsetSpec(kind="easy", size=5, scores=str(path)).identity()
    assert SubsetSpec(kind="easy", size=5, scores=str(path), easy_high=True).identity()[
        "easy"] == "high"


def test_imp_request_orients_the_subset_by_the_registered_score():
    from lthfast import api

    by_aum = api.ImpRequest(dataset="digits", subset="ccs", size=100, rank_by="aum")
    assert by_aum.needs_scores() and by_aum.subset_spec("x.npy").easy_high
    assert not api.ImpRequest(dataset="digits", subset="easy", size=100).subset_spec(
        "x.npy").easy_high
    by_aum.check()
    api.ImpRequest(dataset="digits", subset="easy", size=100, rank_by="grand",
                   score_steps=0).check()  # GraNd at initialisation
    with pytest.raises(UserError, match="--score-steps must be >= 1"):
        api.ImpRequest(dataset="digits", subset="easy", size=100, score_steps=0).check()
    with pytest.raises(UserError, match="unknown score"):
        api.ImpRequest(dataset="digits", subset="easy", size=100, rank_by="bogus").check()


def test_ccs_prunes_the_hardest_fills_the_budget_and_covers_sparse_strata():
    rng = np.random.default_rng(0)
    # 900 easy examples in a dense lump near 0, 100 spread over [1, 10]
    hard = np.r_[rng.random(900) * 0.1, 1 + 9 * rng.random(100)]
    cutoff = 20
    picked = coverage_centric(hard, 100, cutoff, 10, np.random.default_rng(1))
    assert len(picked) == 100 and len(set(picked)) == 100
    hardest = np.argsort(-hard, kind="stable")[:cutoff]
    assert not set(picked) & set(hardest)
    # the sparse region (10% of the data) gets far more than its 10% share; random would not
    assert (hard[picked] >= 1).mean() > 0.5
    # every non-empty stratum of the kept examples gives at least one
    kept = np.setdiff1d(np.arange(1000), hardest)
    edges = np.linspace(hard[kept].min(), hard[kept].max(), 11)
    def strata(idx):
        return set(np.clip(np.searchsorted(edges, hard[idx], "right") - 1, 0, 9))
    assert strata(picked) == strata(kept)
    for size in (1, 7, 333, 980):  # the budget is met exactly, up to all that is kept
        assert len(coverage_centric(hard, size, cutoff, 10, np.random.default_rng(2))) == size
    with pytest.raises(UserError, match="exceeds the 980 examples left"):
        coverage_centric(hard, 981, cutoff, 10, np.random.default_rng(2))


def test_ccs_subsets_are_seeded_and_class_balanced_on_request(digits, tmp_path):
    scores = np.random.default_rng(0).random(digits.train_size)
    path = tmp_path / "s.npy"
    np.save(path, scores)
    spec = SubsetSpec(kind="ccs", size=200, scores=str(path), offset=10, class_balanced=True)
    a, b = make_subset(digits, spec), make_subset(digits, spec)
    assert np.array_equal(a, b) and len(set(a)) == 200
    assert np.bincount(np.asarray(digits.train_labels)[a], minlength=10).tolist() == [20] * 10
    other = make_subset(digits, dataclasses.replace(spec, seed=1))
    assert not np.array_equal(a, other)
    assert spec.identity() != dataclasses.replace(spec, seed=1).identity()


# ---------------------------------------------------------------------------------------------
# scores compared
# ---------------------------------------------------------------------------------------------


def test_spearman_with_ties_matches_its_definition():
    a = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    assert average_ranks(a).tolist() == [4.0, 1.5, 5.0, 1.5, 6.0, 8.0, 3.0, 7.0]
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # ranks only
    b = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    ra, rb = average_ranks(a), average_ranks(b)
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0])


def test_scores_compare_on_digits(digits, data_root, tmp_path, run_cli):
    """EL2N, forgetting, GraNd and AUM of K=2 networks; EL2N and GraNd read at the same step."""
    ctx = context(digits, tmp_path)
    for score, steps in (("el2n", 40), ("grand", 40), ("forgetting", 60), ("aum", 60)):
        compute_scores(ctx, config(score, steps))
    code, out, err = run_cli(["scores", "compare", "--dataset", "digits", "--out", tmp_path,
                              "--root", data_root, "--x", "el2n", "--y", "grand"])
    assert code == 0, err
    paths = out.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "scores_digits.csv", "scores_digits_spearman.png", "scores_digits_el2n_vs_grand.png",
        "scores_digits_spearman.csv"]
    rows = list(csv.reader(open(paths[-1])))
    names = rows[0][1:]
    assert sorted(names) == ["aum", "el2n", "forgetting", "grand"]
    rho = {(r[0], n): float(v) for r in rows[1:] for n, v in zip(names, r[1:])}
    for n in names:
        assert rho[n, n] == pytest.approx(1.0)
    print({k: round(v, 3) for k, v in rho.items() if k[0] < k[1]})  # the numbers, for -s
    assert rho["el2n", "grand"] > 0.5  # related by construction at the same step
    assert rho["el2n", "aum"] < 0  # high AUM is easy: the raw values run the other way
    per_example = list(csv.DictReader(open(paths[0])))
    assert len(per_example) == digits.train_size
    assert int(per_example[5]["label"]) == int(digits.train_labels[5])
    el2n = np.load(next(tmp_path.glob("el2n_*/scores.npy")))
    assert float(per_example[5]["el2n"]) == pytest.approx(float(el2n[5]), rel=1e-6)
    for p in paths[1:3]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_scores_compare_refuses_what_it_cannot_draw(digits, data_root, tmp_path, run_cli):
    code, out, err = run_cli(["scores", "compare", "--dataset", "digits", "--out", tmp_path])
    assert code == 2 and err.startswith("error: scores compare needs at least two") and out == ""
    with pytest.raises(UserError, match="--x and --y come together"):
        compare(tmp_path, "digits", x="el2n")
    code, out, err = run_cli(["scores", "el2n", "--dataset", "digits", "--x", "grand"])
    assert code == 2 and "--x and --y are for 'lthfast scores compare'" in err


def test_imp_by_score_rows_average_replicates_per_run_and_level():
    base = dict(dataset="digits", subset="easy", scores="ab", class_balanced=False,
                subset_size=100, t_r=4, weights_remaining=1.0, diverged=False)
    rows = [base | dict(run="imp_a", rank_by="el2n", replicate=r, level=0, test_acc=acc)
            for r, acc in enumerate((0.5, 0.7))]
    rows += [base | dict(run="imp_b", rank_by="aum", replicate=0, level=0, test_acc=0.9),
             base | dict(run="imp_b", rank_by="aum", replicate=1, level=0, test_acc=0.1,
                         diverged=True)]
    out = imp_by_score_rows(rows)
    assert [(r["rank_by"], r["replicates"]) for r in out] == [("aum", 1), ("el2n", 2)]
    assert out[1]["test_acc_mean"] == pytest.approx(0.6)
    assert out[1]["test_acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
