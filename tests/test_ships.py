"""Ship lists (shipseg.scoring.ships): size, heading and box of each predicted ship."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from shipseg.data import synthetic
from shipseg.data.rle import rle_decode
from shipseg.scoring import ships


def heading_error(measured: float, expected: float) -> float:
    difference = abs(measured - expected) % 180
    return min(difference, 180 - difference)


@pytest.mark.parametrize("angle", [0, 10, 30, 45, 60, 90, 105, 135, 170])
@pytest.mark.parametrize(("length", "width"), [(40, 10), (25, 6)])
def test_drawn_rectangles_come_back_with_their_size_and_heading(angle, length, width):
    mask = synthetic.oriented_rectangle(
        np.array([64.0, 64.0]), length, width, np.radians(angle), (128, 128)
    )
    probabilities = np.where(mask, 0.9, 0.0)
    (record,) = ships.ship_records("a.jpg", mask.astype(np.int32), probabilities, 0.8, 1.5)
    assert record.length_px == pytest.approx(length, abs=1.0)
    assert record.width_px == pytest.approx(width, abs=1.0)
    # The drawing's angle runs from the column axis towards +row (down): clockwise from east.
    assert heading_error(record.heading_deg, 90 + angle) <= 3
    assert record.length_m == pytest.approx(1.5 * record.length_px, abs=0.01)
    assert (record.row, record.column) == pytest.approx((64, 64), abs=1.0)
    assert record.area_px == mask.sum()
    assert record.mean_probability == pytest.approx(0.9)
    assert record.image_ship_probability == 0.8


def test_every_pixel_of_a_ship_lies_in_its_box():
    mask = synthetic.oriented_rectangle(np.array([30.0, 50.0]), 33, 9, 0.6, (80, 100))
    (record,) = ships.ship_records("a.jpg", mask.astype(np.int32), mask.astype(float))
    corners = np.array(record.corners)
    edges = np.roll(corners, -1, axis=0) - corners
    for pixel in np.argwhere(mask):
        sides = [
            np.cross(edge, pixel - corner) for edge, corner in zip(edges, corners, strict=True)
        ]
        assert all(side >= -0.01 for side in sides) or all(side <= 0.01 for side in sides)


def test_ships_are_numbered_as_in_the_mask_and_a_pixel_ship_has_a_one_pixel_box():
    labels = np.zeros((20, 20), np.int32)
    labels[2:4, 2:12] = 1
    labels[15, 15] = 2
    records = ships.ship_records("b.jpg", labels, labels > 0)
    assert [record.ship for record in records] == [1, 2]
    assert records[0].length_px == 10 and records[0].width_px == 2
    assert records[0].heading_deg == pytest.approx(90)
    assert records[1].length_px == 1 and records[1].width_px == 1
    assert records[0].image_ship_probability is None


def test_geojson_holds_one_closed_polygon_per_ship_in_x_y_pixel_coordinates():
    labels = np.zeros((20, 30), np.int32)
    labels[2:4, 5:25] = 1
    records = ships.ship_records("c.jpg", labels, labels.astype(float))
    collection = json.loads(ships.geojson(records))
    (feature,) = collection["features"]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    xs, ys = [x for x, _ in ring], [y for _, y in ring]
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((4.5, 24.5, 1.5, 3.5))
    assert feature["properties"]["ImageId"] == "c.jpg" and "corners" not in feature["properties"]


def test_each_record_holds_its_ships_mask_as_the_submissions_run_length_string():
    labels = np.zeros((20, 30), np.int32)
    labels[2:4, 5:25] = 1
    labels[10:13, 3:5] = 2
    found = ships.ship_records("d.jpg", labels, labels > 0)
    assert [rle_decode(record.EncodedPixels, labels.shape).sum() for record in found] == [40, 6]
    assert (rle_decode(found[1].EncodedPixels, labels.shape) == (labels == 2)).all()


def test_the_csv_has_one_column_per_field_in_order_and_reads_back_as_the_same_records():
    labels = np.zeros((20, 30), np.int32)
    labels[2:4, 5:25] = 1
    labels[15, 15] = 2
    for head in (0.81234, None):
        found = ships.ship_records("e.jpg", labels, labels * 0.4, head)
        table = pd.read_csv(io.StringIO(ships.csv_text(found)), keep_default_na=False)
        assert tuple(table.columns) == ships.SHIP_COLUMNS == tuple(ships.ShipRecord.model_fields)
        read = [
            ships.ShipRecord.model_validate(
                {**row, "corners": json.loads(row["corners"])}
                | {"image_ship_probability": row["image_ship_probability"] or None}
            )
            for row in table.astype(str).to_dict("records")
        ]
        assert read == found


def test_an_empty_ship_list_is_a_csv_header_and_an_empty_feature_collection():
    assert ships.csv_text([]) == ",".join(ships.SHIP_COLUMNS) + "\n"
    assert json.loads(ships.geojson([])) == {"type": "FeatureCollection", "features": []}
