"""The pixel-classifier ensemble: init, early stopping, voting, uncertainty, both training modes, save/load."""

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from probe.ensemble import (
    ArrayPixels,
    EarlyStopping,
    PixelEnsemble,
    StackedLinear,
    StackedMLP,
    StackedStep,
    hidden_sizes,
    jensen_shannon,
    majority_vote,
    member_generators,
    new_member,
    resolve_precision,
)
from probe.errors import ProbeError
from probe.utils.runtime import Compiled
from probe.tasks.segment import predict_image
from probe.features.sampler import PixelSampler, StoredMaps


def separable_problem(pixels: int, seed: int, num_classes: int = 4, dim: int = 12):
    """Gaussian blobs, one per class, far apart: a linear probe gets them all right."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(100).normal(0.0, 3.0, (num_classes, dim))
    labels = rng.integers(0, num_classes, pixels)
    features = centers[labels] + rng.normal(0.0, 1.0, (pixels, dim))
    return features.astype(np.float32), labels


def noise_problem(pixels: int = 256):
    """Random features and labels: batch losses go up and down, so members stop at different times."""
    rng = np.random.default_rng(0)
    return ArrayPixels(rng.normal(size=(pixels, 8)).astype(np.float32), rng.integers(0, 3, pixels))


def test_init_statistics_and_no_global_rng_use():
    global_state = torch.random.get_rng_state()
    mlp = new_member(64, 10, member_generators(0, 0)[0])
    assert torch.equal(torch.random.get_rng_state(), global_state)
    linears = [mlp[0], mlp[3], mlp[6]]
    weights = torch.cat([linear.weight.flatten() for linear in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.03)
    assert abs(weights.mean().item()) < 1e-3
    assert all(torch.all(linear.bias == 0) for linear in linears)
    for norm in (mlp[2], mlp[5]):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_members_get_different_reproducible_init():
    first, again, other = (new_member(8, 3, member_generators(seed, m)[0]) for seed, m in ((0, 0), (0, 0), (0, 1)))
    assert torch.equal(first[0].weight, again[0].weight)
    assert not torch.equal(first[0].weight, other[0].weight)


def test_hidden_sizes_switch_at_30_classes():
    assert hidden_sizes(29) == (128, 32)
    assert hidden_sizes(30) == (256, 128)
    small, large = new_member(16, 29, torch.Generator()), new_member(16, 30, torch.Generator())
    assert [small[i].out_features for i in (0, 3, 6)] == [128, 32, 29]
    assert [large[i].out_features for i in (0, 3, 6)] == [256, 128, 30]


def test_stacked_eval_forward_equals_member_modules():
    mlps = [new_member(8, 5, member_generators(3, m)[0]) for m in range(3)]
    generator = torch.Generator().manual_seed(1)
    for mlp in mlps:  # non-trivial running statistics and affine parameters
        for norm in (mlp[2], mlp[5]):
            for tensor in (norm.running_mean, norm.weight, norm.bias):
                tensor.data.normal_(0.0, 0.5, generator=generator)
            norm.running_var.data.uniform_(0.5, 2.0, generator=generator)
        mlp.eval()
    stacked = StackedMLP.from_members(mlps).eval()
    x = torch.randn(50, 8, generator=generator)
    with torch.no_grad():
        expected = torch.stack([mlp(x) for mlp in mlps])
        torch.testing.assert_close(stacked(x), expected, rtol=1e-5, atol=1e-6)


def test_early_stopping_rule_on_given_losses():
    stopper = EarlyStopping(members=2, patience=2, check_after_epoch=3)
    for _ in range(5):  # epochs 0..3 are not checked, whatever the losses
        assert not stopper.update(3, np.array([9.0, 9.0])).any()
    sequence = [[1.0, 1.0], [1.0, 0.9], [0.5, 0.8], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8]]
    stops = [stopper.update(4, np.array(losses)).tolist() for losses in sequence]
    # member 0: best 1.0, +1, reset at 0.5, +1, +2, +3 > 2 -> stops on the 6th batch
    # member 1: improves on batches 1-3, then +1, +2, +3 > 2 -> stops on the 6th batch too
    assert stops == [[False, False]] * 5 + [[True, True]]
    stopper = EarlyStopping(members=2, patience=1, check_after_epoch=0)
    stops = [stopper.update(1, np.array(losses)).tolist() for losses in ([1.0, 1.0], [2.0, 0.5], [2.0, 0.4])]
    assert stops == [[False, False], [False, False], [True, False]]
    assert stopper.stopped.tolist() == [True, False]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize(("patience", "batch_size", "early_batch_size"),
                         [(50, 64, None), (5, 64, None), (5, 128, None), (5, 96, None), (5, 64, 128), (50, 64, 256),
                          (5, 64, 512)])
def test_fit_stops_at_the_predicted_iteration_when_loss_never_improves(batched, patience, batch_size, early_batch_size):
    # Identical pixels and lr=0: every batch loss is exactly the same. Epochs 0..3 are unchecked
    # (4 epochs of 256 // early batch full batches), the first checked batch sets the best loss, and the count
    # passes `patience` on the (patience + 1)-th batch after it (batches of batch_size: 256 // batch_size per
    # epoch). A larger batch takes fewer steps for the same epochs; patience counts batches whatever their size.
    # An early batch larger than the 256 pixels (512) leaves the authors' rule.
    pixels = ArrayPixels(np.ones((256, 8), np.float32), np.full(256, 1))
    ensemble = PixelEnsemble(3, members=2, lr=0.0, patience=patience, batch_size=batch_size, batched=batched,
                             early_batch_size=early_batch_size, progress=False).fit(pixels)
    steps_per_epoch = {64: 4, 128: 2, 96: 2, 256: 1}  # 96: the last 64 pixels of each shuffle are dropped
    used = early_batch_size if early_batch_size and early_batch_size <= 256 else None
    assert ensemble.early_batch_size_ == used
    unchecked, checked = steps_per_epoch[used or batch_size], steps_per_epoch[batch_size]
    expected = 4 * unchecked + 1 + (patience + 1)
    assert ensemble.iterations_.tolist() == [expected, expected]
    assert ensemble.epochs_.tolist() == [4 + -(-(expected - 4 * unchecked) // checked)] * 2


@pytest.mark.parametrize("batched", [True, False])
def test_early_batches_follow_a_hand_written_reference(batched, tmp_path):
    # check_after_epoch=0: epoch 0 is unchecked, one batch of 128 pixels at lr 1e-3 * 128 / 64; epoch 1 takes
    # batches of 64 at lr 1e-3. The reference: torch's own modules, Adam and the same shuffles.
    features, labels = separable_problem(128, seed=3)
    ensemble = PixelEnsemble(4, members=1, early_batch_size=128, check_after_epoch=0, max_epochs=2, batched=batched,
                             progress=False).fit(ArrayPixels(features, labels))
    mlp = new_member(12, 4, member_generators(0, 0)[0])
    rng = member_generators(0, 0)[1]  # member 0's own shuffles, in either mode
    optimizer = torch.optim.Adam(mlp.parameters())
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for lr, batch in ((2e-3, 128), (1e-3, 64)):
        optimizer.param_groups[0]["lr"] = lr
        for idx in torch.from_numpy(rng.permutation(128)).split(batch):
            optimizer.zero_grad()
            F.cross_entropy(mlp(x[idx]), y[idx]).backward()
            optimizer.step()
    expected = StackedMLP.from_members([mlp]).state_dict()
    for key, value in ensemble.model_.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-6)
    assert (ensemble.iterations_.tolist(), ensemble.epochs_.tolist()) == ([3], [2])
    ensemble.save(tmp_path / "ensemble", {})
    loaded = PixelEnsemble.load(tmp_path / "ensemble")[0]
    assert (loaded.early_batch_size, loaded.early_batch_size_) == (128, 128)


@pytest.mark.parametrize(("members", "batch_size", "call_sizes"),
                         [(1, 64, [1024, 1024, 1024, 1024, 64]), (1, 256, [1024] * 4), (1, 600, [600] * 6),
                          (4, 64, [1024] * 16 + [256]), (10, 64, [640] * 65), (3, 600, [1800] * 6)])
def test_training_fetches_about_1024_pixels_per_features_call(members, batch_size, call_sizes):
    # One epoch of 4160 pixels: full batches only, fetched in calls of whole batches of every member of about
    # GATHER_PIXELS in all (larger calls are slower per pixel with the store's sampler), at least one batch each.
    pixels = ArrayPixels(*separable_problem(4160, seed=0))
    sizes = []
    features = pixels.features
    pixels.features = lambda idx, dtype: sizes.append(len(idx)) or features(idx, dtype)
    PixelEnsemble(4, members=members, batch_size=batch_size, max_epochs=1, progress=False, compile=False).fit(pixels)
    assert sizes == call_sizes


def test_majority_vote_breaks_ties_toward_the_smallest_label():
    member_labels = torch.tensor(
        [  # pixel:  0  1  2  3
            [2, 1, 3, 3],
            [0, 1, 2, 3],
            [2, 1, 1, 2],
            [0, 3, 0, 2],
        ]
    )
    # pixel 0: 0 and 2 tie -> 0; pixel 1: 1 wins; pixel 2: four-way tie -> 0; pixel 3: 2 and 3 tie -> 2
    assert majority_vote(member_labels, 4).tolist() == [0, 1, 0, 2]


def test_jensen_shannon_and_uncertainty_against_numpy():
    logits = torch.randn(5, 200, 6, generator=torch.Generator().manual_seed(0)) * 3
    probs = scipy.special.softmax(logits.double().numpy(), axis=-1)
    expected = scipy.stats.entropy(probs.mean(0), axis=-1) - scipy.stats.entropy(probs, axis=-1).mean(0)
    js = jensen_shannon(logits).numpy()
    np.testing.assert_allclose(js, expected, atol=1e-5)
    assert np.all(js > -1e-6)
    assert PixelEnsemble.uncertainty(js) == pytest.approx(np.sort(expected)[-20:].mean(), abs=1e-5)
    assert PixelEnsemble.uncertainty(np.array([0.1, 0.7, 0.3])) == pytest.approx(0.7)  # fewer than 10 pixels


@pytest.mark.parametrize("compile", [False, True])
def test_batched_and_sequential_fits_reach_the_same_weights(compile):
    # The authors' algorithm either way: member m shuffles the 320 pixels every epoch with its own generator, 5 batches
    # of 64 an epoch, 6 epochs (2 of them checked). With float32 products the stacked fit and torch's modules one
    # member after another take the same steps, so they reach the same weights and losses up to float rounding.
    features, labels = separable_problem(320, seed=1)
    fitted = [PixelEnsemble(4, members=3, max_epochs=6, batched=batched, precision="float32", progress=False,
                            compile=compile if batched else None).fit(ArrayPixels(features, labels))
              for batched in (True, False)]
    batched, sequential = (ensemble.model_.state_dict() for ensemble in fitted)
    for key in batched:
        torch.testing.assert_close(batched[key], sequential[key], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fitted[0].last_loss_, fitted[1].last_loss_, rtol=1e-4)
    assert fitted[0].iterations_.tolist() == fitted[1].iterations_.tolist() == [30] * 3
    initial = StackedMLP.from_members([new_member(12, 4, member_generators(0, m)[0]) for m in range(3)]).state_dict()
    assert (batched["0.weight"] - initial["0.weight"]).abs().max() > 1e-3  # training moved the weights


def test_members_train_on_their_own_shuffles():
    # Member m of a stacked fit is the 1-member fit whose shuffles come from member m's generator: its weights do not
    # depend on the other members, and members with the same initial weights still end apart (other orders).
    features, labels = separable_problem(320, seed=1)
    team = PixelEnsemble(4, members=3, max_epochs=3, progress=False).fit(ArrayPixels(features, labels))
    reference = StackedMLP.from_members([new_member(12, 4, member_generators(0, 2)[0])]).train()
    step, rng = StackedStep(reference, compile=False), member_generators(0, 2)[1]
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(3):
        for idx in torch.from_numpy(rng.permutation(320)).split(64):
            step(x[idx][None], y[idx][None], 1e-3)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(team.model_.state_dict()[key][2], value[0], rtol=1e-5, atol=1e-7)
    orders = [member_generators(0, m)[1].permutation(320) for m in range(3)]
    assert not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_compiled_step_computes_what_the_eager_step_does(precision, tmp_path):
    # torch.compile fuses the hand-written step; the arithmetic must stay the eager step's (which the test above
    # holds to autograd and torch's Adam), up to float rounding: Adam's steps are about lr = 1e-3 whatever the
    # gradient's size, so a weight whose gradient is near 0 may differ by a fraction of one step.
    features, labels = separable_problem(256, seed=1)
    fitted = [PixelEnsemble(4, members=3, max_epochs=3, progress=False, precision=precision, compile=compile).fit(
        ArrayPixels(features, labels)) for compile in (True, False)]
    assert [ensemble.compiled_ for ensemble in fitted] == [True, False]
    compiled, eager = (ensemble.model_.state_dict() for ensemble in fitted)
    for key in compiled:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fitted[0].last_loss_, fitted[1].last_loss_, rtol=1e-4)
    fitted[0].save(tmp_path, {})
    assert PixelEnsemble.load(tmp_path)[0].compiled_ is True


def test_a_step_that_cannot_compile_says_so_once_and_trains_eagerly(monkeypatch, capsys):
    def no_compiler(*args):
        raise RuntimeError("no C++ compiler")

    features, labels = separable_problem(128, seed=1)
    eager = PixelEnsemble(4, members=2, max_epochs=2, progress=False, compile=False).fit(
        ArrayPixels(features, labels))
    monkeypatch.setattr("torch.compile", lambda function, **options: no_compiler)
    fallen_back = PixelEnsemble(4, members=2, max_epochs=2, progress=False, compile=True).fit(
        ArrayPixels(features, labels))
    assert capsys.readouterr().err.count("torch.compile failed (RuntimeError); training without it") == 1
    assert fallen_back.compiled_ is False
    for key, value in eager.model_.state_dict().items():
        torch.testing.assert_close(fallen_back.model_.state_dict()[key], value, rtol=0, atol=0)


def test_compiled_runs_the_first_calls_shapes_compiled_and_others_as_they_are(monkeypatch):
    calls = []

    def fake_compile(function, **options):
        assert options == {"dynamic": False, "fullgraph": True}
        return lambda x, scale: calls.append(tuple(x.shape)) or "compiled"

    monkeypatch.setattr("torch.compile", fake_compile)
    compiled = Compiled(lambda x, scale: "eager", True, "testing")
    results = [compiled(torch.zeros(n, 3), 2.0) for n in (128, 128, 64, 128, 7)]
    assert results == ["compiled", "compiled", "eager", "compiled", "eager"] and compiled.compiled
    assert calls == [(128, 3)] * 3
    assert Compiled(lambda x: "eager", False, "testing")(torch.zeros(1)) == "eager"


def test_long_fits_compile_by_default(monkeypatch):
    features, labels = separable_problem(256, seed=1)  # 4 steps per epoch: 16 in the 4 unchecked epochs
    monkeypatch.setattr("probe.ensemble.training.COMPILE_FROM_STEPS", 17)
    assert PixelEnsemble(4, members=3, max_epochs=1, progress=False).fit(
        ArrayPixels(features, labels)).compiled_ is False
    monkeypatch.setattr("probe.ensemble.training.COMPILE_FROM_STEPS", 16)
    assert PixelEnsemble(4, members=3, max_epochs=1, progress=False).fit(
        ArrayPixels(features, labels)).compiled_ is True


def test_batched_member_keeps_its_parameters_from_the_step_it_stopped():
    # Member 0's shuffles depend on (seed, 0) only, so member 0 of a 4-member run sees the same batches as a
    # 1-member run; after it stops, the others' steps must not move it.
    settings = dict(patience=5, check_after_epoch=0, max_epochs=40, progress=False)
    team = PixelEnsemble(3, members=4, **settings).fit(noise_problem())
    alone = PixelEnsemble(3, members=1, **settings).fit(noise_problem())
    assert team.iterations_[0] == alone.iterations_[0] < team.iterations_.max()
    for key, value in alone.model_.state_dict().items():
        torch.testing.assert_close(team.model_.state_dict()[key][0], value[0])


def test_both_modes_learn_a_separable_problem_equally_well():
    train_features, train_labels = separable_problem(1024, seed=0)
    test_features, test_labels = separable_problem(1000, seed=1)
    accuracies = []
    for batched in (True, False):
        ensemble = PixelEnsemble(4, members=3, max_epochs=5, batched=batched, progress=False)
        ensemble.fit(ArrayPixels(train_features, train_labels))
        predicted, js = ensemble.predict(test_features, chunk=300)
        assert predicted.dtype == np.int64 and js.dtype == np.float32 and js.shape == (1000,)
        accuracies.append((predicted == test_labels).mean())
        assert ensemble.score(test_features, test_labels, ignore_label=255) > 0.9
    assert min(accuracies) > 0.95
    assert abs(accuracies[0] - accuracies[1]) < 0.02


def test_same_seed_same_predictions_other_seed_other_predictions():
    features, labels = separable_problem(512, seed=0)
    test_features = separable_problem(300, seed=2)[0]

    def run(seed):
        ensemble = PixelEnsemble(4, members=2, max_epochs=2, seed=seed, progress=False)
        return ensemble.fit(ArrayPixels(features, labels)).predict(test_features)[1]

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_save_load_round_trip(tmp_path, precision):
    features, labels = separable_problem(512, seed=0)
    ensemble = PixelEnsemble(4, members=2, max_epochs=2, progress=False, precision=precision)
    ensemble.fit(ArrayPixels(features, labels))
    folder = tmp_path / "ensemble"
    manifest = {"classes": ["a", "b", "c", "d"], "blocks": [5, 6], "checkpoint_sha256": "abc"}
    ensemble.save(folder, manifest)
    assert sorted(path.name for path in folder.iterdir()) == ["manifest.json", "weights.pt"]
    loaded, loaded_manifest = PixelEnsemble.load(folder)
    assert loaded_manifest == manifest
    assert loaded.iterations_.tolist() == ensemble.iterations_.tolist() == [16, 16]
    assert (loaded.dim_, loaded.members, loaded.max_epochs) == (12, 2, 2)
    assert loaded.precision == precision and loaded.model_[0].products == getattr(torch, precision)
    test_features = separable_problem(300, seed=2)[0]
    for before, after in zip(ensemble.predict(test_features), loaded.predict(test_features)):
        np.testing.assert_array_equal(before, after)


def test_an_ensemble_saved_with_the_member_axis_second_loads(tmp_path):
    # Files written before 2026-12-06 hold each Linear weight as (in, M, out); they load into (M, in, out).
    features, labels = separable_problem(512, seed=0)
    ensemble = PixelEnsemble(4, members=3, max_epochs=1, progress=False).fit(ArrayPixels(features, labels))
    ensemble.save(tmp_path, {})
    state = torch.load(tmp_path / "weights.pt")
    assert state["0.weight"].shape == (3, 12, 128)
    torch.save({key: value.movedim(0, 1) if value.ndim == 3 else value for key, value in state.items()},
               tmp_path / "weights.pt")
    loaded = PixelEnsemble.load(tmp_path)[0]
    test_features = separable_problem(300, seed=2)[0]
    for before, after in zip(ensemble.predict(test_features), loaded.predict(test_features)):
        np.testing.assert_array_equal(before, after)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ProbeError, match="manifest.json"):
        PixelEnsemble.load(tmp_path / "nowhere")
    features, labels = separable_problem(128, seed=0)
    folder = tmp_path / "ensemble"
    PixelEnsemble(4, members=1, max_epochs=1, progress=False).fit(ArrayPixels(features, labels)).save(folder, {})
    (folder / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ProbeError, match="weights.pt"):
        PixelEnsemble.load(folder)
    (folder / "manifest.json").write_text("{ truncated")
    with pytest.raises(ProbeError, match="manifest.json"):
        PixelEnsemble.load(folder)


def test_user_errors():
    features, labels = separable_problem(128, seed=0)
    with pytest.raises(ProbeError, match="outside"):
        PixelEnsemble(3, progress=False).fit(ArrayPixels(features, labels))  # labels go up to 3
    with pytest.raises(ProbeError, match="batch_size"):
        PixelEnsemble(4, progress=False).fit(ArrayPixels(features[:10], labels[:10]))
    with pytest.raises(ProbeError, match="early_batch_size=1: batch normalisation"):
        PixelEnsemble(4, early_batch_size=1, progress=False).fit(ArrayPixels(features, labels))
    with pytest.raises(ProbeError, match="not trained"):
        PixelEnsemble(4).predict(features)
    ensemble = PixelEnsemble(4, members=1, max_epochs=1, progress=False).fit(ArrayPixels(features, labels))
    with pytest.raises(ProbeError, match=r"\(N, 12\)"):
        ensemble.predict(features[:, :5])


def test_bfloat16_products_round_the_factors_and_keep_float32_parameters():
    generator = torch.Generator().manual_seed(0)
    layer = StackedLinear(3, 40, 6)
    layer.weight.data.normal_(0.0, 1.0, generator=generator)
    layer.bias.data.normal_(0.0, 1.0, generator=generator)
    x = torch.randn(20, 40, generator=generator)
    exact = layer(x)
    layer.products = torch.bfloat16
    out = layer(x)
    products = torch.einsum("bi,mio->bmo", x.bfloat16().float(), layer.weight.bfloat16().float())
    assert out.dtype == torch.float32 and out.shape == (20, 3, 6)
    error = (out - layer.bias - products).abs()
    assert torch.all(error <= products.abs() * 2 ** -8 + 1e-5)  # float32 sums of rounded factors, rounded once
    assert 1e-3 < (out - exact).abs().max().item() < 0.5
    out.sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(layer.weight.grad, x.bfloat16().float().sum(0)[None, :, None].expand(3, 40, 6),
                               rtol=2 ** -8, atol=0.0)


def test_bfloat16_training_predicts_as_float32():
    features, labels = separable_problem(2048, seed=0, num_classes=6, dim=64)
    test_features, test_labels = separable_problem(1000, seed=2, num_classes=6, dim=64)
    predictions = {}
    for precision in ("float32", "bfloat16"):
        ensemble = PixelEnsemble(6, members=3, max_epochs=2, progress=False, precision=precision)
        ensemble.fit(ArrayPixels(features, labels))
        assert all(p.dtype == torch.float32 for p in ensemble.model_.parameters())
        assert ensemble.model_[0].products == getattr(torch, precision)
        predictions[precision] = ensemble.predict(test_features)[0]
    assert (predictions["float32"] == test_labels).mean() > 0.95
    assert (predictions["bfloat16"] == predictions["float32"]).mean() > 0.99


def test_precision_choice(monkeypatch):
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert resolve_precision("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert resolve_precision("auto", "cpu") == "bfloat16"
    assert PixelEnsemble(4, precision="auto").precision == "bfloat16"
    assert PixelEnsemble(4, precision="auto", batched=False).precision == "float32"
    assert resolve_precision("auto", "cpu", batched=False) == "float32"
    with pytest.raises(ProbeError, match="precision 'half'"):
        resolve_precision("half", "cpu")
    with pytest.raises(ProbeError, match="batched"):
        PixelEnsemble(4, precision="bfloat16", batched=False)


def random_stacked_ensemble(dim: int, precision: str = "float32") -> PixelEnsemble:
    """A 3-member ensemble over 5 classes with random weights and batch-norm statistics (no training needed)."""
    generator = torch.Generator().manual_seed(0)
    model = StackedMLP(3, dim, 5, precision)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data.uniform_(0.5, 1.5, generator=generator) if tensor.dim() < 3 else tensor.data.normal_(
            0.0, 0.3, generator=generator)
    ensemble = PixelEnsemble(5, members=3, progress=False, precision=precision)
    ensemble.model_, ensemble.dim_ = model.eval(), dim
    return ensemble


def test_predict_products_equals_predict_on_the_features():
    ensemble = random_stacked_ensemble(12)
    features = torch.randn(400, 12, generator=torch.Generator().manual_seed(1))
    weight, products = ensemble.first_layer(12)
    assert weight.shape == (12, 3 * 128) and products == torch.float32
    labels, js = ensemble.predict(features)
    labels_from_products, js_from_products = ensemble.predict_products(features @ weight, chunk=128)
    np.testing.assert_array_equal(labels_from_products, labels)
    np.testing.assert_allclose(js_from_products, js, rtol=1e-4, atol=1e-6)
    assert len(set(labels.tolist())) > 1 and js.max() > 0.01  # members disagree somewhere: a real comparison
    with pytest.raises(ProbeError, match="dimension 11 given, the ensemble was trained on 12"):
        ensemble.first_layer(11)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_predict_image_equals_predicting_the_upsampled_features(precision):
    """The prediction path (first layer at native resolution, products upsampled) gives the labels and the
    uncertainty of predicting every output pixel's upsampled features."""
    generator = torch.Generator().manual_seed(2)
    maps = [torch.randn(1, channels, size, size, generator=generator).half() for channels, size in ((6, 4), (4, 16), (3, 32))]
    sampler = PixelSampler(maps, 32)
    ensemble = random_stacked_ensemble(sampler.dim, precision)
    labels, js = ensemble.predict(sampler.image_features(0, slice(0, 32)))
    got, uncertainty = predict_image(ensemble, sampler, band_pixels=300)  # bands of 9 rows, the last one shorter
    assert got.shape == (32, 32)
    agreement = (got.ravel() == labels).mean()
    assert agreement == 1.0 if precision == "float32" else agreement > 0.98
    assert uncertainty == pytest.approx(PixelEnsemble.uncertainty(js), rel=1e-4 if precision == "float32" else 2e-2)


def test_a_sampler_over_the_store_files_equals_one_over_stacked_maps(tmp_path):
    """PixelSampler.from_store copies each image's memory-mapped file straight into its channels-last groups
    (StoredMaps): the same groups, bit for bit, and so the same training features, as stacking the maps first."""
    generator = torch.Generator().manual_seed(3)
    images, shapes = ["a", "b", "c"], {"up5": (6, 4), "up8": (4, 16), "up9": (3, 4)}
    maps = {name: torch.randn(len(images), channels, size, size, generator=generator).half()
            for name, (channels, size) in shapes.items()}
    for name, stacked in maps.items():
        for index, image in enumerate(images):
            np.save(tmp_path / f"{image}-{name}.npy", stacked[index].numpy())

    class Store:  # the ActivationStore's read: a (C, h, w) float16 memory-mapped file per image and name
        def read(self, image, name):
            return np.load(tmp_path / f"{image}-{name}.npy", mmap_mode="r")

    stored = PixelSampler([StoredMaps(Store(), images, name) for name in shapes], 16)
    in_memory = PixelSampler(list(maps.values()), 16)
    assert [tuple(group.shape) for group in stored.groups] == [(3, 4, 4, 9), (3, 16, 16, 4)]
    for ours, reference in zip(stored.groups, in_memory.groups):
        assert ours.dtype == torch.float16 and torch.equal(ours, reference)
    where = [np.array([0, 2, 1, 2]), np.array([0, 15, 7, 3]), np.array([5, 0, 15, 9])]
    assert torch.equal(stored.gather(*where), in_memory.gather(*where))


def test_unchecked_epochs_run_each_gathers_batches_as_single_steps():
    # Epochs 0..3 check no loss, so the loop runs the batches of one gather back to back and reads the losses once:
    # the same steps, bit for bit, as stepping batch by batch with the same shuffles (33 batches of 64 per epoch,
    # fetched in gathers of 8 batches of each member, four times, then 1).
    features, labels = separable_problem(33 * 64, seed=4)
    fitted = PixelEnsemble(4, members=2, max_epochs=2, progress=False, compile=False).fit(
        ArrayPixels(features, labels))
    model = StackedMLP.from_members([new_member(12, 4, member_generators(0, m)[0]) for m in range(2)]).train()
    step, rngs = StackedStep(model, compile=False), [member_generators(0, m)[1] for m in range(2)]
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(2):
        orders = torch.from_numpy(np.stack([rng.permutation(len(labels)) for rng in rngs]))
        for idx in orders.split(64, 1):
            losses = step(x[idx], y[idx], 1e-3)
    for key, value in model.state_dict().items():
        assert torch.equal(fitted.model_.state_dict()[key], value), key
    assert fitted.iterations_.tolist() == [66, 66] and fitted.epochs_.tolist() == [2, 2]
    np.testing.assert_array_equal(fitted.last_loss_, losses.numpy().astype(np.float64))


@pytest.mark.parametrize("batched", [True, False])
def test_the_bar_of_a_fit_stopped_early_says_so_and_ends_full(batched, monkeypatch):
    # As above: identical pixels and lr=0 stop every member at its 23rd step, in epoch 6 of 100 (4 unchecked epochs
    # of 4 steps, then 7 steps of 4 per epoch). The bar's last word names that epoch instead of "6/100 epochs, 0/2
    # active"; a fit that reaches max_epochs keeps counting its active members.
    import probe.ensemble.estimator as estimator

    bars = []

    class Recorded(estimator.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(estimator, "Progress", Recorded)
    pixels = ArrayPixels(np.ones((256, 8), np.float32), np.full(256, 1))
    fitted = PixelEnsemble(3, members=2, lr=0.0, patience=5, batched=batched, progress=False).fit(pixels)
    assert fitted.epochs_.tolist() == [6, 6] and fitted.iterations_.tolist() == [23, 23]  # the numbers as before
    tasks = bars[-1].tasks
    assert len(tasks) == (1 if batched else 2)
    for task in tasks:
        assert (task.completed, task.total) == (6, 6)
        assert task.fields["status"] == "stopped early at epoch 6, loss 1.0986"  # ln 3: uniform over 3 classes
    PixelEnsemble(3, members=2, lr=0.0, patience=5, max_epochs=2, batched=batched, progress=False).fit(pixels)
    assert [(task.completed, task.total, task.fields["status"]) for task in bars[-1].tasks][-1] == (
        2, 2, "2/2 active, loss 1.0986" if batched else "1/1 active, loss 1.0986")
