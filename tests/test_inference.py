"""The real ``inference.py`` command line and its per-image outputs: masks, overlays, submission."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import inference_command, run, second_run_while_the_first_holds_its_lock
from shipseg.data import airbus
from shipseg.data.rle import rle_decode
from shipseg.predict import batch, drawing, records
from shipseg.scoring import metrics as scoring
from waiting import wait_until


def test_masks_and_overlays_of_images_with_and_without_ships(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (24, 20, 3)).astype(np.float32)
    sure_ship = np.zeros((24, 20), np.float32)
    sure_ship[3:9, 4:12] = 0.99
    settings = batch.scoring.PostprocessConfig(threshold=0.5, image_threshold=0.9)
    for name, probabilities in (("sea", np.zeros((24, 20), np.float32)), ("ship", sure_ship)):
        labels = batch.process_prediction(
            tmp_path / f"{name}.jpg", probabilities, settings, tmp_path, True, image
        )
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png"))
        overlay = np.asarray(Image.open(tmp_path / "overlays" / f"{name}.png"))
        assert mask.shape == overlay.shape == (24, 20)
        np.testing.assert_array_equal(mask > 0, labels > 0)
        np.testing.assert_array_equal(overlay >= 128, labels > 0)  # red palette entries
        np.testing.assert_array_equal(
            overlay % 128, drawing.overlay_indices(image, None)
        )  # the grey image everywhere
    assert (labels > 0).sum() == 48


def test_default_output_folder_follows_the_model():
    assert batch.default_output_dir(Path("results/p/final/model.keras")) == Path(
        "results/p/predictions"
    )
    assert batch.default_output_dir(Path("/tmp/model.keras")) == Path("/tmp/predictions")


def decoded_submission(submission: pd.DataFrame, image_id: str, shape) -> list[np.ndarray]:
    rows = submission[submission.ImageId == image_id].EncodedPixels.fillna("")
    return [rle_decode(rle, shape) for rle in rows if rle]


def test_inference_writes_masks_overlays_and_a_submission_that_decodes_back(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    out = tmp_path / "predictions"
    test_dir = Path(synthetic_dataset) / "test_v2"
    result = run(
        inference_command(project.parent, str(test_dir), "--out", str(out), "--threshold", "0.3")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(test_dir.glob("*.jpg"))
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"]
    assert set(submission.ImageId) == {path.name for path in images}
    for path in images:
        mask = np.array(Image.open(out / "masks" / f"{path.stem}.png"))
        assert mask.shape == (64, 64)
        overlay = np.array(Image.open(out / "overlays" / f"{path.stem}.png").convert("RGB"))
        assert overlay.shape == (64, 64, 3)
        # Red exactly where the mask has ships; grey everywhere else.
        red = (overlay[..., 0] > overlay[..., 1]) & (overlay[..., 1] == overlay[..., 2])
        np.testing.assert_array_equal(red, mask > 0)
        ships = decoded_submission(submission, path.name, mask.shape)
        # One row per ship, no overlaps, exactly the mask's ships.
        assert len(ships) == len(np.unique(mask[mask > 0]))
        total = np.sum(ships, axis=0) if ships else np.zeros(mask.shape)
        assert total.max() <= 1
        np.testing.assert_array_equal(total > 0, mask > 0)
        if not ships:
            assert (submission[submission.ImageId == path.name].EncodedPixels == "").sum() == 1
    assert "images/s" in result.stdout


@pytest.mark.slow
def test_inference_scores_against_labels(trained_project, synthetic_dataset, tmp_path):
    project, _ = trained_project
    result = run(
        inference_command(
            project.parent,
            str(Path(synthetic_dataset) / "train_v2" / "*.jpg"),
            "--out",
            str(tmp_path),
            "--labels",
            str(Path(synthetic_dataset) / airbus.CSV_NAME),
            "--no-overlays",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images"] == 40
    assert 0 <= scores["f2"] <= 1 and 0 <= scores["dice"] <= 1
    assert not (tmp_path / "overlays").exists()


@pytest.mark.slow
def test_a_bad_file_is_skipped_and_the_others_are_written(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    images = tmp_path / "images"
    shutil.copytree(Path(synthetic_dataset) / "test_v2", images)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg" * 10)
    gray = images / "gray.png"
    Image.fromarray(np.full((50, 70), 90, np.uint8)).save(gray)
    result = run(inference_command(project.parent, str(images), "--out", str(tmp_path / "out")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg" in result.stderr
    submission = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    assert "broken.jpg" not in set(submission.ImageId)
    assert {
        "gray.png",
        *[p.name for p in (Path(synthetic_dataset) / "test_v2").glob("*.jpg")],
    } == set(submission.ImageId)
    # A grayscale image of another size gets a mask of its own size.
    assert np.array(Image.open(tmp_path / "out" / "masks" / "gray.png")).shape == (50, 70)


@pytest.mark.slow
def test_nothing_processable_exits_non_zero(trained_project, tmp_path):
    project, _ = trained_project
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = run(inference_command(project.parent, str(bad), "--out", str(tmp_path / "out")))
    assert result.returncode == 1
    assert "no image could be processed" in result.stderr
    assert not (tmp_path / "out" / "submission.csv").exists()


@pytest.mark.slow
def test_missing_or_incompatible_models_are_explained(trained_project, synthetic_dataset, tmp_path):
    import keras

    project, _ = trained_project
    images = str(Path(synthetic_dataset) / "test_v2")
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_text("garbage")
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)])
    dense_path = tmp_path / "dense.keras"
    dense.save(dense_path)
    cases = [
        (["--model", str(tmp_path / "absent.keras")], "model file not found"),
        (["--model", str(not_a_model)], "cannot load the model"),
        (["--model", str(dense_path)], "not a ship U-Net"),
        (["--results-dir", str(tmp_path / "empty")], "no trained model found"),
        ([str(tmp_path / "nothing*.jpg")], "no image file matches"),
    ]
    for arguments, message in cases:
        result = run(inference_command(project.parent, images, *arguments))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_submission_rows_decode_to_exactly_the_predicted_ships(tmp_path):
    probabilities = np.zeros((40, 60), np.float32)
    probabilities[2:6, 3:20] = 0.9
    probabilities[10:30, 40:44] = 0.8
    probabilities[35:37, 1:3] = 0.95  # 4 pixels: dropped by min_ship_pixels
    config = scoring.PostprocessConfig(threshold=0.5, image_threshold=0.5, min_ship_pixels=5)
    image = tmp_path / "sea.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    labels = batch.process_prediction(image, probabilities, config, tmp_path, overlays=True)
    rows = records.ship_rows("sea.png", labels)
    assert len(rows) == 2
    decoded = [rle_decode(rle, labels.shape) for _, rle in rows]
    np.testing.assert_array_equal(decoded[0] + 2 * decoded[1], labels)
    saved = np.array(Image.open(tmp_path / "masks" / "sea.png"))
    assert len(np.unique(saved[saved > 0])) == 2
    assert records.ship_rows("empty.png", np.zeros((4, 4), np.int32)) == [("empty.png", "")]


@pytest.mark.slow
def test_an_interrupted_inference_resumes_to_the_same_submission_and_scores(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    images = sorted((Path(synthetic_dataset) / "train_v2").glob("*.jpg"))[:8]
    labels = ["--labels", str(Path(synthetic_dataset) / "train_ship_segmentations_v2.csv")]

    def infer(out):
        command = inference_command(project.parent, *map(str, images), "--out", str(out), *labels)
        result = run(command)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    infer(whole)
    infer(resumed)
    # As a run killed part-way leaves it: the last images have no record (their outputs may be
    # half written), and the tables are not written yet. A machine's crash can leave a record
    # empty (records are not flushed to disk one by one): that image is redone too.
    for path in images[4:]:
        (resumed / "records" / f"{path.name}.json").unlink()
        (resumed / "masks" / f"{path.stem}.png").write_bytes(b"half")
    (resumed / "records" / f"{images[3].name}.json").write_text("")
    for name in ("submission.csv", "images.csv", "scores.json"):
        (resumed / name).unlink()
    # Batches of two: images 3 and 4 form a batch that is not done, so both are predicted again.
    assert "Resuming: 2 of 8 images are done already" in infer(resumed).stdout
    for name in ("submission.csv", "images.csv"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    # Scores are sums over the images, added in another order: equal up to rounding.
    scores = json.loads((resumed / "scores.json").read_text())
    expected = json.loads((whole / "scores.json").read_text())
    assert scores.pop("found_by_size") == expected.pop("found_by_size")  # counts: exactly
    assert scores == pytest.approx(expected, nan_ok=True)
    for path in images:
        mask = f"masks/{path.stem}.png"
        assert (resumed / mask).read_bytes() == (whole / mask).read_bytes()


@pytest.mark.slow
def test_an_output_folder_of_another_model_or_settings_is_not_mixed_into(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    test_dir = str(Path(synthetic_dataset) / "test_v2")
    out = tmp_path / "predictions"
    assert run(inference_command(project.parent, test_dir, "--out", str(out))).returncode == 0
    result = run(
        inference_command(project.parent, test_dir, "--out", str(out), "--threshold", "0.9")
    )
    assert result.returncode == 2
    assert (
        "holds predictions of another settings" in result.stderr and "--overwrite" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = run(
        inference_command(
            project.parent, test_dir, "--out", str(out), "--threshold", "0.9", "--overwrite"
        )
    )
    assert result.returncode == 0 and "Resuming" not in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_an_inference_killed_midway_resumes_to_the_uninterrupted_submission(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    images = str(Path(synthetic_dataset) / "train_v2")
    slow = ["--tta", "--batch-size", "1"]  # so that the kill comes before the end
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert (
        run(inference_command(project.parent, images, "--out", str(whole), *slow)).returncode == 0
    )
    process = subprocess.Popen(
        inference_command(project.parent, images, "--out", str(killed), *slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: len(list((killed / "records").glob("*.json"))) >= 3,
        "three images' records",
        timeout=300,
        process=process,
    )
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the inference ended before it could be killed"
    assert not (killed / "submission.csv").exists()
    result = run(inference_command(project.parent, images, "--out", str(killed), *slow))
    assert result.returncode == 0 and "Resuming: " in result.stdout, result.stderr[-2000:]
    for name in ("submission.csv", "images.csv"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.slow
def test_a_second_inference_into_a_busy_folder_is_refused_and_the_first_finishes(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    out = tmp_path / "predictions"
    command = inference_command(
        project.parent, str(Path(synthetic_dataset) / "train_v2"), "--out", str(out), "--tta"
    )
    first, second, stderr = second_run_while_the_first_holds_its_lock(
        command, out / "inference.json"
    )
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, stderr[-3000:]
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert submission.ImageId.nunique() == len(
        list((Path(synthetic_dataset) / "train_v2").iterdir())
    )


@pytest.mark.slow
def test_inference_lists_every_predicted_ship_with_its_box_in_csv_and_geojson(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    out = tmp_path / "predictions"
    images = str(Path(synthetic_dataset) / "train_v2")
    command = inference_command(project.parent, images, "--out", str(out), "--pixel-size", "2")
    # The tiny model is barely trained: thresholds that keep whatever it sees.
    loose = ["--threshold", "0.005", "--image-threshold", "0", "--ship-threshold", "0"]
    result = run([*command, *loose, "--min-ship-pixels", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    ship_list = pd.read_csv(out / "ships.csv")
    assert len(ship_list) == (submission.EncodedPixels != "").sum() > 0
    for row in ship_list.itertuples():
        mask = np.array(Image.open(out / "masks" / f"{Path(row.ImageId).stem}.png"))
        levels = sorted(np.unique(mask[mask > 0]), reverse=True)  # ship 1 is the brightest
        assert (mask == levels[row.ship - 1]).sum() == row.area_px
        assert row.length_m == pytest.approx(2 * row.length_px, abs=0.02)
        assert 0 <= row.heading_deg < 180 and 0 < row.width_px
    features = json.loads((out / "ships.geojson").read_text())["features"]
    assert len(features) == len(ship_list)


def test_labels_that_do_not_fit_an_image_leave_it_unscored_not_the_run_failed(capsys, tmp_path):
    scorer = batch.LabelScorer(pd.Series({"a.jpg": ("1 100",), "b.jpg": ()}))
    scorer.add("a.jpg", np.zeros((4, 4), np.int32), 0.1)  # a run past the 16 pixels
    scorer.add("b.jpg", np.zeros((4, 4), np.int32), 0.1)
    scores = scorer.report(tmp_path)
    assert scores["images"] == 1
    assert "not scored: a.jpg" in capsys.readouterr().err


def test_records_are_kept_by_file_name_so_a_png_does_not_reuse_a_jpgs(tmp_path):
    identity = {"model": "m", "settings": {}}
    records.open_run(tmp_path, identity, overwrite=False)
    drawing.save_png(tmp_path / "masks" / "a.png", drawing.empty_mask_png(2, 2))
    records.write_record(tmp_path, "a.jpg", {"rows": []})
    assert records.open_run(tmp_path, identity, overwrite=False) == {"a.jpg"}


def test_an_image_whose_mask_did_not_survive_is_done_again(tmp_path):
    identity = {"model": "m", "settings": {}}
    records.open_run(tmp_path, identity, overwrite=False)
    for name in ("a", "b"):
        drawing.save_png(tmp_path / "masks" / f"{name}.png", drawing.empty_mask_png(2, 2))
        records.write_record(tmp_path, f"{name}.jpg", {"rows": []})
    (tmp_path / "masks" / "b.png").write_bytes(b"")  # as a machine's crash can leave it
    assert records.open_run(tmp_path, identity, overwrite=False) == {"a.jpg"}


def test_a_resumed_folder_keeps_the_batch_size_it_was_started_with(tmp_path):
    assert batch._earlier_batch_size(tmp_path) is None
    (tmp_path / records.RUN_FILE).write_text(json.dumps({"settings": {"batch_size": 4}}))
    assert batch._earlier_batch_size(tmp_path) == 4
