"""Per-example scores (``lthfast.experiments.scores``): EL2N and forgetting, against references.

EL2N: after a tiny ``compute_scores`` run (digits, ResNet-8, K=2 models, 40 iterations, CPU),
``scores.npy`` must equal a computation by hand from the members' saved ``weights.pt``: each K=1
network rebuilt from its state dict, run in eval mode over the un-augmented train images
normalised here with the dataset's mean/std, then ‖softmax − onehot(y)‖₂ averaged over the
models. Forgetting: ``ForgettingCounter`` is fed hand-made logits, labels and per-model index
batches over eight steps whose correct/incorrect sequences per (model, example) are worked out by
hand, including an example one model never gets right (it must score that model's largest count
+ 1 and rank hardest), and ``forgetting_from_sequence`` is checked on the same sequences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.config import Recipe
from lthfast.experiments.common import IMP_SEEDS, Context, Runtime, new_model, replicate_seeds
from lthfast.experiments.scores import (ForgettingCounter, ScoreConfig, compute_scores,
                                        forgetting_from_sequence)
from lthfast.models import build
from lthfast.train import checkpoint as ckpt

# ---------------------------------------------------------------------------------------------
# EL2N
# ---------------------------------------------------------------------------------------------


def score_context(digits, out):
    return Context(Runtime(out=out, device="cpu", checkpoint_every=0, progress=None), digits)


def el2n_config(**changes) -> ScoreConfig:
    recipe = Recipe("resnet8", 32, 0.1, (), 40)
    return ScoreConfig(**({"score": "el2n", "dataset": "digits", "recipe": recipe, "models": 2}
                          | changes))


def test_el2n_scores_equal_a_direct_computation_from_the_saved_models(digits, tmp_path):
    path = compute_scores(score_context(digits, tmp_path), el2n_config())
    scores = np.load(path)
    run = path.parent
    assert run.name.startswith("el2n_") and (run / "done.json").exists()
    assert scores.dtype == np.float32 and scores.shape == (digits.train_size,)
    assert not (run / "scratch").exists()  # the packing group's checkpoint space is gone

    states = [ckpt.load(run / f"replicate_{m}" / "weights.pt") for m in range(2)]
    assert not torch.equal(states[0]["stem.weight"], states[1]["stem.weight"])
    members = [np.load(run / f"replicate_{m}" / "el2n.npy") for m in range(2)]

    mean = torch.tensor(digits.meta["mean"], dtype=torch.float32)
    std = torch.tensor(digits.meta["std"], dtype=torch.float32)
    x = (torch.from_numpy(np.array(digits.train_images)).float() - mean) / std  # N×H×W×3
    x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.array(digits.train_labels, dtype=np.int64))
    onehot = torch.nn.functional.one_hot(y, 10).double()
    per_model = []
    for state in states:
        net = build("resnet8", 10, k=1)
        net.load_state_dict(state)
        net.eval()
        with torch.no_grad():
            logits = net(x)[:, 0].double()  # N×1×C -> N×C
        probs = torch.exp(logits - torch.logsumexp(logits, dim=1, keepdim=True))
        per_model.append(torch.sqrt(((probs - onehot) ** 2).sum(1)).numpy())
    expected = np.mean(per_model, axis=0)

    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    for member, reference in zip(members, per_model):  # each member's own values are kept
        np.testing.assert_allclose(member, reference, atol=1e-5, rtol=0)
    # the check has teeth: scores vary, and one model alone is not the average
    assert scores.std() > 0.05 and scores.max() > 0.5
    assert np.abs(per_model[0] - expected).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# forgetting
# ---------------------------------------------------------------------------------------------

C = 3  # classes; example e has label e % C

# Per model, the examples in each step's batch (B=2, 8 steps, every example seen 4 times) ...
BATCHES = [
    [(0, 1), (2, 3), (1, 0), (3, 2), (0, 2), (1, 3), (2, 0), (3, 1)],  # model 0
    [(3, 2), (1, 0), (2, 1), (0, 3), (1, 3), (2, 0), (3, 0), (1, 2)],  # model 1
]
# ... and whether the model gets example e right at its 1st..4th presentation.
SEQUENCES = [
    {0: "TFTF", 1: "FFFF", 2: "TTFT", 3: "FTTT"},  # model 0
    {0: "TTTT", 1: "TFFF", 2: "FFFF", 3: "FTFT"},  # model 1
]
# Counted by hand: correct -> incorrect changes (T then F), per model and example.
COUNTS = [[2, 0, 1, 0], [0, 1, 0, 1]]
NEVER = [[False, True, False, False], [False, False, True, False]]
# Never-correct examples score that model's largest count + 1: model 0 -> 3, model 1 -> 2.
PER_MODEL = [[2, 3, 1, 0], [0, 1, 2, 1]]
MEAN = [1.0, 2.0, 1.5, 0.5]


def feed(counter: ForgettingCounter, models: list[int]) -> None:
    seen = {(m, e): 0 for m in models for e in range(4)}
    for step in range(8):
        idx = torch.tensor([[BATCHES[m][step][b] for m in models] for b in range(2)])  # B×K
        y = idx % C
        logits = torch.randn(2, len(models), C, generator=torch.Generator().manual_seed(step))
        for b in range(2):
            for j, m in enumerate(models):
                e = int(idx[b, j])
                right = SEQUENCES[m][e][seen[m, e]] == "T"
                seen[m, e] += 1
                pred = int(y[b, j]) if right else (int(y[b, j]) + 1) % C
                logits[b, j, pred] += 10.0  # the argmax, whatever the noise
        counter.on_batch(step, logits, y, idx)
    assert all(v == 4 for v in seen.values())


def test_forgetting_from_sequence_matches_hand_counts():
    for m in range(2):
        for e in range(4):
            seq = [c == "T" for c in SEQUENCES[m][e]]
            assert forgetting_from_sequence(seq) == COUNTS[m][e], (m, e)
    assert forgetting_from_sequence([]) == 0
    assert forgetting_from_sequence([True]) == 0
    assert forgetting_from_sequence([True, False, False, True, False]) == 2


def test_forgetting_counter_matches_hand_worked_sequences():
    counter = ForgettingCounter(2, 4, torch.device("cpu"))
    feed(counter, [0, 1])
    assert counter.forgotten.tolist() == COUNTS
    assert (~counter.state_dict()["ever_correct"]).tolist() == NEVER
    reference = [[forgetting_from_sequence([c == "T" for c in SEQUENCES[m][e]])
                  for e in range(4)] for m in range(2)]
    assert counter.forgotten.tolist() == reference
    scores = counter.scores()
    assert scores.tolist() == pytest.approx(MEAN, abs=0)
    assert int(np.argmax(scores)) == 1


def test_repeats_within_a_batch_count_their_presentations_in_order():
    """Batches of 8 over 5 examples (a subset smaller than the batch, or an epoch boundary):
    the counter equals each example's presentation sequence, in batch order."""
    rng = np.random.default_rng(0)
    n, k, b = 5, 2, 8
    counter = ForgettingCounter(k, n, torch.device("cpu"))
    history = [[[] for _ in range(n)] for _ in range(k)]
    for step in range(30):
        idx = torch.from_numpy(rng.integers(0, n, size=(b, k)))
        right = torch.from_numpy(rng.random((b, k)) < 0.5)
        y = idx % C
        logits = torch.zeros(b, k, C).scatter_(2, torch.where(right, y, (y + 1) % C)[..., None],
                                               1.0)
        counter.on_batch(step, logits, y, idx)
        for pos in range(b):
            for m in range(k):
                history[m][int(idx[pos, m])].append(bool(right[pos, m]))
    state = counter.state_dict()
    assert counter.forgotten.tolist() == [[forgetting_from_sequence(h) for h in hs]
                                          for hs in history]
    assert state["last_correct"].tolist() == [[h[-1] for h in hs] for hs in history]
    assert state["ever_correct"].tolist() == [[any(h) for h in hs] for hs in history]


@pytest.mark.parametrize("model", [0, 1])
def test_never_correct_example_ranks_hardest_with_max_count_plus_one(model):
    counter = ForgettingCounter(1, 4, torch.device("cpu"))
    feed(counter, [model])
    scores = counter.scores()
    assert scores.tolist() == pytest.approx(PER_MODEL[model], abs=0)
    never = NEVER[model].index(True)
    assert scores[never] == max(COUNTS[model]) + 1
    assert int(np.argmax(scores)) == never
    assert np.sum(scores == scores.max()) == 1  # strictly hardest


def test_ensemble_members_are_not_the_imp_replicates_and_reruns_repeat_scores(digits, tmp_path):
    """Appendix A trains the K networks "from different random initializations": member m must
    not start from IMP replicate m's w0 (same seed would mean same network, data order and
    augmentation). Two identical default runs give bit-identical scores."""
    path = compute_scores(score_context(digits, tmp_path / "a"), el2n_config(recipe=Recipe(
        "resnet8", 32, 0.1, (), 1)))
    again = compute_scores(score_context(digits, tmp_path / "b"), el2n_config(recipe=Recipe(
        "resnet8", 32, 0.1, (), 1)))
    assert np.load(path).tobytes() == np.load(again).tobytes()
    for m in range(2):
        imp_init = new_model("resnet8", 10, [replicate_seeds(0, m, IMP_SEEDS)["init"]],
                             torch.device("cpu")).stem.weight.detach()
        member = ckpt.load(path.parent / f"replicate_{m}" / "weights.pt")["stem.weight"]
        # one step of training moves the weights a little; a shared init would stay close
        assert (member - imp_init[: member.shape[0]]).abs().mean() > 0.1


# ---------------------------------------------------------------------------------------------
# LMC scores: the spawn step must come before the end of the schedule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["200", "300"])  # digits: T = 200
def test_lmc_scores_spawned_at_or_past_the_end_are_refused_before_any_work(
        steps, data_root, tmp_path, run_cli):
    """Children train [t, T): from t >= T they train nothing and every score would be 0."""
    code, out, err = run_cli(["scores", "lmc", "--dataset", "digits", "--steps", steps,
                              "--models", "1", "--root", data_root, "--out", tmp_path / "out"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: --steps {steps} (the lmc spawn step) must be smaller "
                               "than the 200 iterations"), lines[0]
    assert out == "" and not (tmp_path / "out").exists()


def test_lmc_spawn_step_is_checked_against_the_schedule_where_scores_are_derived():
    from lthfast import api
    from lthfast.errors import UserError

    small = dict(dataset="digits", subset="easy", size=100, rank_by="lmc")
    api.ImpRequest(**small, score_steps=199).check()  # the last step before T: fine
    with pytest.raises(UserError, match=r"^--score-steps 300 \(the lmc spawn step\) must be "
                                        r"smaller than the 200 iterations"):
        api.ImpRequest(**small, score_steps=300).check()
    # a shortened schedule: the default spawn step (digits' t* = 4) is past its end
    with pytest.raises(UserError, match=r"lmc spawn step \(--score-steps, default t\* = 4\) "
                                        r"must be smaller than the 3 iterations"):
        api.ImpRequest(**small, steps=2, train_steps=3).check()
    # warmup ranks its subset by scores on the preset's schedule (T = 200 on digits)
    with pytest.raises(UserError, match="--score-steps 250"):
        api.WarmupRequest(**small, warmup=5, score_steps=250).check()
    with pytest.raises(UserError, match="--steps 201"):
        api.ScoreRequest(dataset="digits", kind="lmc", steps=201).check()
    api.ScoreRequest(dataset="digits", kind="el2n", steps=300).check()  # not a spawn step


def test_compute_scores_refuses_an_lmc_parent_past_the_schedule(digits, tmp_path):
    """The library below the request checks it too, before writing anything."""
    from lthfast.errors import UserError

    parent, recipe = Recipe("resnet8", 32, 0.1, (), 50), Recipe("resnet8", 32, 0.1, (), 50)
    cfg = ScoreConfig(score="lmc", dataset="digits", recipe=recipe, parent=parent, models=1,
                      children=2)
    with pytest.raises(UserError, match="spawn step 50 must be smaller than the 50"):
        compute_scores(score_context(digits, tmp_path / "out"), cfg)
    assert not (tmp_path / "out").exists()
