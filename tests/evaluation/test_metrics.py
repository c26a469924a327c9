"""The metric functions on hand-made inputs: accuracies, gathering, retrieval, kNN, records."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fima.evaluation import classification_metrics, recall_at_k, weighted_knn_predict
from fima.evaluation.classification import per_class_table
from fima.evaluation.inference import merge_video_outputs
from fima.evaluation.results import summary_table, write_results
from fima.evaluation.visualization import render_confusion_matrix
from fima.utils.files import set_aside


def test_classification_metrics_video_clip_top5_and_confusion() -> None:
    labels = np.array([0, 1, 2, 2])
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # right
            [0.6, 0.3, 0.1],  # wrong (second)
            [0.1, 0.2, 0.7],  # right
            [0.5, 0.4, 0.1],  # wrong (third)
        ]
    )
    clips = np.array([[0, 0], [0, 1], [2, 1], [0, 0]])
    metrics = classification_metrics(labels, scores, clips)
    assert metrics["video_top1"] == 50.0
    assert metrics["clip_top1"] == 100.0 * 4 / 8
    assert metrics["video_top5"] == 100.0  # 3 classes: top-3
    np.testing.assert_array_equal(metrics["confusion"], [[1, 0, 0], [1, 0, 0], [1, 0, 1]])
    np.testing.assert_allclose(metrics["per_class"], [100.0, 0.0, 50.0])
    assert metrics["mean_class_accuracy"] == 50.0


def test_per_class_accuracy_skips_classes_without_videos() -> None:
    metrics = classification_metrics(
        np.array([0, 0]), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.zeros((2, 1), int)
    )
    assert math.isnan(metrics["per_class"][1]) and math.isnan(metrics["per_class"][2])
    assert metrics["mean_class_accuracy"] == 50.0
    table = per_class_table(["a", "b", "c"], metrics["per_class"], np.array([2, 0, 0]))
    assert "50.0" in table and "-" in table


def test_gathered_rows_are_kept_once_per_video_and_sorted() -> None:
    def part(indices, bad=()):
        indices = np.array(indices)
        return indices, indices % 3, {"score": indices[:, None] * np.ones((1, 2))}, list(bad)

    merged = merge_video_outputs(
        [
            part([4, 0, 2], [(5, "v5.avi", "corrupt")]),
            part([1, 3, 4]),
            part([], [(5, "v5.avi", "x")]),
        ]
    )
    np.testing.assert_array_equal(merged.indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(merged.labels, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(merged.outputs["score"][:, 0], [0, 1, 2, 3, 4])
    assert [b[0] for b in merged.bad] == [5]
    with pytest.raises(RuntimeError, match="No video"):
        merge_video_outputs([part([]), part([])])


def test_recall_at_k_counts_a_hit_in_the_top_k() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 1, 2])
    queries = torch.tensor([[1.0, 0.05], [0.0, 1.0], [-1.0, 0.1]])
    query_labels = torch.tensor([1, 0, 0])
    # Query 0: nearest bank 0 (class 0), then 1 (class 1): hit at rank 2.
    # Query 1: nearest 2 (1), then 1 (1), 0 (0): hit at rank 3. Query 2: class 0 at rank 3 or 4.
    recalls = recall_at_k(queries, query_labels, bank, bank_labels, (1, 2, 3, 10), center=False)
    assert recalls[1] == 0.0
    assert recalls[2] == pytest.approx(100 / 3)
    assert recalls[3] == pytest.approx(200 / 3)
    assert recalls[10] == 100.0  # k larger than the bank: every class is within reach


def test_recall_centres_each_set_on_its_own_mean() -> None:
    """FAME's protocol: the queries minus their mean, the bank minus its own. Here the two sets
    sit at different offsets, which hide the classes until each is removed."""
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 8, generator=gen)
    bank_labels, query_labels = torch.arange(24) % 4, torch.arange(12) % 4
    bank = centres[bank_labels] + 0.8 * torch.randn(24, 8, generator=gen) + 3.0
    queries = centres[query_labels] + 0.8 * torch.randn(12, 8, generator=gen) - 2.0
    topk = (1, 2, 5)
    centred = recall_at_k(queries, query_labels, bank, bank_labels, topk)
    by_hand = recall_at_k(
        queries - queries.mean(dim=0), query_labels, bank - bank.mean(dim=0), bank_labels, topk,
        center=False,
    )  # fmt: skip
    assert centred == by_hand
    assert centred != recall_at_k(queries, query_labels, bank, bank_labels, topk, center=False)


def test_weighted_knn_votes_by_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.1]])
    cosine = F.normalize(bank, dim=1) @ F.normalize(query, dim=1)[0]  # [4]
    votes = weighted_knn_predict(query, bank, labels, 2, k=2, temperature=0.1)
    # The two nearest are bank 0 (class 0, closer) and bank 1 (class 1): class 0 wins, each
    # voting exp(cosine / temperature); banks 2 and 3 are not among the k.
    assert votes.argmax(dim=1).item() == 0
    torch.testing.assert_close(votes[0], (cosine[:2] / 0.1).exp())
    votes = weighted_knn_predict(query, bank, labels, 2, k=4, temperature=10)
    # With a flat weighting the three class-1 neighbours outvote the single class-0 one ...
    assert votes.argmax(dim=1).item() == 1
    # ... unless k leaves them out.
    votes = weighted_knn_predict(query, bank, labels, 2, k=1, temperature=10)
    assert votes.argmax(dim=1).item() == 0 and votes[0, 1].item() == 0.0


def test_confusion_matrix_png(tmp_path) -> None:
    confusion = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]])
    names = ["Circle", "SlideHorizontal", "ShakeVertical"]
    image = render_confusion_matrix(confusion, names, str(tmp_path / "cm.png"), title="test")
    loaded = Image.open(tmp_path / "cm.png")
    assert loaded.size == image.size and loaded.mode == "RGB"
    pixels = np.asarray(loaded)
    # The full rows' darkest cell (row 2, 4 of 5) is darker than an empty one (white).
    assert pixels.min() < 100 and pixels.max() == 255
    # Room for the labels: the image is much wider than the cells alone.
    assert loaded.size[0] > 3 * 40


def test_results_json_records_checkpoint_hash_and_keeps_the_previous(tmp_path) -> None:
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"weights")
    path = write_results(str(tmp_path), {"test/video_top1": 50.0}, "cfg.yaml", str(checkpoint))
    with open(path) as f:
        record = json.load(f)
    assert record["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert record["metrics"] == {"test/video_top1": 50.0}
    assert record["config_file"].endswith("cfg.yaml") and record["timestamp"]
    write_results(str(tmp_path), {"test/video_top1": 60.0}, "", "")
    assert len(list(tmp_path.glob("results.*.json"))) == 1  # the first record is kept
    with open(path) as f:
        assert json.load(f)["checkpoint_sha256"] is None
    assert "test/video_top1" in summary_table({"test/video_top1": 60.0})


def test_records_of_one_second_are_all_kept(tmp_path) -> None:
    """Two earlier results.json written in the same second were both renamed to
    results.<that second>.json, the second replacing the first."""
    stamp = 1_796_000_000
    for value in (1.0, 2.0, 3.0):
        write_results(str(tmp_path), {"m": value}, "", "")
        os.utime(tmp_path / "results.json", (stamp, stamp))
    kept = sorted(tmp_path.glob("results.*.json"))
    assert len(kept) == 2
    values = {json.loads(path.read_text())["metrics"]["m"] for path in kept}
    assert values == {1.0, 2.0}
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["m"] == 3.0
    # A folder of reports is set aside whole, named after its newest file's time.
    (tmp_path / "inference" / "test").mkdir(parents=True)
    (tmp_path / "inference" / "test" / "classification.json").write_text("{}")
    os.utime(tmp_path / "inference" / "test" / "classification.json", (stamp, stamp))
    moved = set_aside(str(tmp_path / "inference"))
    stem = datetime.datetime.fromtimestamp(stamp).strftime("%Y%m%d-%H%M%S")
    assert moved == str(tmp_path / f"inference.{stem}")
    assert os.path.isfile(os.path.join(moved, "test", "classification.json"))
    assert set_aside(str(tmp_path / "inference")) is None


def test_retrieval_refuses_to_centre_a_set_of_one_video(tmp_path) -> None:
    """Centred on its own mean, a single test video's feature was zero: R@k came from the
    order of the training videos (R@1 0, R@5 100 for a query whose class is in none of the
    first five), reported as a result."""
    from unittest import mock

    from fima.config import ConfigError
    from fima.evaluation import RetrievalEvaluator, VideoOutputs
    from tests.evaluation.helpers import classifier_cfg

    def videos(features: list[list[float]], labels: list[int]) -> VideoOutputs:
        return VideoOutputs(
            indices=np.arange(len(labels)),
            labels=np.array(labels),
            outputs={"feature": np.array(features, dtype=np.float32)},
        )

    bank = videos([[0.0, 1.0], [0.1, 1.0], [1.0, 0.1], [1.0, 0.0]], [0, 0, 1, 1])
    query = videos([[1.0, 0.05]], [1])
    cfg = classifier_cfg(str(tmp_path), **{"TEST.RETRIEVAL.TOPK": (1,)})
    evaluator = RetrievalEvaluator(cfg)
    message = "TEST.RETRIEVAL.CENTER: 4 training and 1 test"
    with (
        mock.patch.object(evaluator, "features", side_effect=[bank, query]),
        pytest.raises(ConfigError, match=message),
    ):
        evaluator.evaluate(torch.nn.Identity())
    cfg.defrost()
    cfg.TEST.RETRIEVAL.CENTER = False  # uncentred, the one query finds its class
    evaluator = RetrievalEvaluator(cfg)
    with mock.patch.object(evaluator, "features", side_effect=[bank, query]):
        assert evaluator.evaluate(torch.nn.Identity())["retrieval/R@1"] == 100.0
