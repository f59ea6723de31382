"""The weight-free evaluator agrees with quality: the short form of the calibration benchmark
(bench/bench_evaluator_calibration.py runs the whole set). A handful of real photographs and two
three severities per corruption family (the mildest and the two strongest); the assertions are issue 22's "Done when" targets."""

from __future__ import annotations

import pytest

from generations.agentic import ShotSettings
from processors.evaluators import QualityEvaluator
from processors.evaluators.calibration import FAMILIES, Report, auc, build_set, evaluate, spearman

THRESHOLD = ShotSettings().min_confidence_score  # the AGENTIC default acceptance threshold
PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field")
# How the reasons name each family's fault at its strongest severity. A dark photo (the Hubble
# deep field) brightened 4.5 times clips little: what it shows is its amplified noise; a photo
# darkened to near black is named a blank frame.
NAMED = {"noise": ("noisy",), "blur": ("blurry",), "jpeg": ("JPEG artefacts",),
         "overexposed": ("clipped highlights", "noisy"), "underexposed": ("underexposed", "blank frame"),
         "colour_cast": ("colour cast",), "banding": ("banding",), "blank": ("blank frame",),
         "partly_rendered": ("partly rendered",), "aspect": ("wrong aspect ratio",),
         "matte_holes": ("bad cut-out: holes",), "matte_speckle": ("bad cut-out: speckled",),
         "matte_soft": ("bad cut-out: soft",)}


@pytest.fixture(scope="module")
def samples():
    return build_set(PHOTOS, severities=(1, 3, 4))


@pytest.fixture(scope="module")
def report(samples) -> Report:
    return evaluate(QualityEvaluator(), samples)


def test_clean_photos_score_well_above_the_threshold(report):
    assert min(report.clean_scores.values()) > THRESHOLD, report.clean_scores
    assert min(report.cutout_scores.values()) > THRESHOLD, report.cutout_scores


def test_clean_and_corrupted_are_told_apart(report):
    assert report.auc >= 0.95


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_scores_below_its_clean_original_at_its_strongest_levels(report, family):
    result = report.families[family]
    assert result.strongest_below_clean, result.failures
    assert result.spearman > 0.5  # more of the fault, lower the score


def test_pure_noise_and_blank_frames_fail(report):
    assert len(report.noise_scores) == 3 and len(report.blank_scores) == 4
    assert max(report.noise_scores + report.blank_scores) < THRESHOLD


def test_the_reasons_name_the_fault(samples):
    evaluator = QualityEvaluator()
    missing = []
    for sample in samples:
        if sample.family in NAMED and sample.severity == 4:
            reasons = evaluator.evaluate(sample.image, sample.context).reasons
            if not any(name in r for name in NAMED[sample.family] for r in reasons):
                missing.append((sample.photo, sample.family, reasons))
    assert not missing


def test_the_set_is_the_same_on_every_run():
    first, second = build_set(PHOTOS[:1], severities=(4,)), build_set(PHOTOS[:1], severities=(4,))
    assert [(s.family, s.severity, s.image.tobytes()) for s in first] == \
        [(s.family, s.severity, s.image.tobytes()) for s in second]


def test_the_metrics():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.5], [0.5]) == 0.5  # a tie counts half
    assert auc([0.1], [0.9]) == 0.0
    assert spearman([0, 1, 2, 3], [1, 5, 6, 9]) == pytest.approx(1.0)
    assert spearman([0, 1, 2], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [1, 1, 1]) == 0.0  # a constant side has no rank agreement
