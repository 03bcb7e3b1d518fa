import pytest
import torch

from compare.metrics.classifier import ClassifierConfig, DomainClassifier, class_accuracy, train_classifier
from compare.metrics.features import FeatureNet
from nextscale.data import load_digits


@pytest.fixture(scope="module")
def digits():
    return load_digits(side=16)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A briefly trained classifier (the full default run is the slow accuracy test)."""
    cache = tmp_path_factory.mktemp("clf_cache")
    return train_classifier(digits, seed=0, cache_dir=cache, steps=30, progress=False), cache


@pytest.mark.slow  # 400 steps of CPU training: ~10 s alone, ~35 s on a busy 2-core machine
def test_reaches_95_percent_on_digits_test_split(digits):
    clf = train_classifier(digits, seed=0, progress=False)
    acc = class_accuracy(clf, digits.x_test, digits.y_test)
    assert acc >= 0.95, acc
    # labels that are all wrong score 0: the accuracy is the share matching the requested class
    assert class_accuracy(clf, digits.x_test, (clf.predict(digits.x_test) + 1) % 10) == 0.0


def test_feature_interface(digits, trained):
    clf, _ = trained
    assert isinstance(clf, FeatureNet) and clf.name == "classifier" and clf.dim == 64
    f = clf.features(digits.x_test[:50], batch_size=16)
    assert f.shape == (50, 64) and f.dtype == torch.float32 and not f.requires_grad
    torch.testing.assert_close(f, clf.features(digits.x_test[:50], batch_size=50))
    torch.testing.assert_close(f.pow(2).mean(1), torch.ones(50), atol=1e-4, rtol=0)  # RMS-normalised
    labels = clf.predict(digits.x_test[:50])
    assert labels.shape == (50,) and labels.dtype == torch.long


def test_cache_reuses_weights(digits, trained):
    clf, cache = trained
    files = list(cache.iterdir())
    assert len(files) == 1 and digits.fingerprint() in files[0].name and "seed0" in files[0].name
    mtime = files[0].stat().st_mtime_ns
    again = train_classifier(digits, seed=0, cache_dir=cache, steps=30, progress=False)
    assert files[0].stat().st_mtime_ns == mtime  # nothing retrained or rewritten
    for (k, a), b in zip(clf.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    other = train_classifier(digits, seed=1, cache_dir=cache, steps=2, progress=False)
    assert len(list(cache.iterdir())) == 2  # another seed/config: another file
    assert not torch.equal(other.head.weight, clf.head.weight)


def test_seeded(digits):
    a = train_classifier(digits, seed=3, steps=5, progress=False)
    b = train_classifier(digits, seed=3, steps=5, progress=False)
    c = train_classifier(digits, seed=4, steps=5, progress=False)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_validation():
    with pytest.raises(ValueError, match="image_side"):
        ClassifierConfig(image_side=2)
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierConfig(num_classes=1)
    clf = DomainClassifier(ClassifierConfig())
    with pytest.raises(ValueError, match="16x16"):
        clf.features(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="1 channels"):
        clf.features(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="one label per image"):
        class_accuracy(clf, torch.zeros(2, 1, 16, 16), torch.zeros(3, dtype=torch.long))
