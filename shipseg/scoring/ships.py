"""Ship lists: one record per predicted ship (where, how long, which way, how sure).

From a label image (one label per ship, as ``scoring.probabilities_to_ships`` makes it) and
the pixel probabilities. The oriented box comes from the ship's pixels: its axis is the main
axis of their second moments, its length the pixels' extent along that axis (plus one pixel:
extents run from pixel centre to pixel centre), its width the ship's area over that length
(the extent across the axis overstates a thin rotated ship by up to a pixel). On drawn
rectangles of 12 x 4 to 40 x 10 pixels at any angle, length and width come back within a pixel
(measured: length +0.97 px at worst, width within 0.6 px), where the moments' ellipse axes
would be 15 % long.

Conventions: rows and columns are pixel coordinates (row 0 at the top, pixel centres at whole
numbers); the heading is the ship's axis in degrees clockwise from the image's up direction
("north" on north-up imagery), 0 to 180 (a ship's bow is not told from its stern).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipseg.data.rle import rle_encode_pixels

# Airbus imagery: 1.5 m per pixel.
DEFAULT_PIXEL_SIZE = 1.5


class ShipRecord(BaseModel):
    """One predicted ship: the one form of a ship in every output that lists ships.

    Inference's ``ships.csv`` has the fields as columns, in this order (``csv_text``), and its
    ``ships.geojson`` has them as each box's properties (``geojson``); the service answers
    with these records (JSON, CSV or GeoJSON) and its page shows and downloads them. The field
    names are ``ships.csv``'s (``ImageId`` and ``EncodedPixels`` as in the Airbus CSVs).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ImageId: str = Field(description="The image's file name (the service: the image's label).")
    ship: int = Field(
        ge=1, description="The ship's number in its image, from 1 (its level in the mask PNG)."
    )
    row: float = Field(description="The box's centre: pixel row (0 at the top).")
    column: float = Field(description="The box's centre: pixel column (0 at the left).")
    length_px: float = Field(description="Length along the ship's axis, in pixels.")
    width_px: float = Field(description="Width across the axis (area / length), in pixels.")
    length_m: float = Field(description="length_px in metres (times the pixel size).")
    width_m: float = Field(description="width_px in metres (times the pixel size).")
    heading_deg: float = Field(
        description="The axis's direction in degrees clockwise from up, 0 to 180 "
        "(bow and stern are not told apart)."
    )
    area_px: int = Field(ge=1, description="The ship's pixels.")
    mean_probability: float = Field(description="Mean pixel probability over the ship.")
    max_probability: float = Field(description="Highest pixel probability in the ship.")
    image_ship_probability: float | None = Field(
        description="The ship head's probability that the image holds a ship (null for a "
        "model without a head); the same for every ship of an image."
    )
    corners: tuple[tuple[float, float], ...] = Field(
        min_length=4,
        max_length=4,
        description="The box's four corners in order around it, each [row, column] "
        "(every pixel of the ship lies inside).",
    )
    EncodedPixels: str = Field(
        description="The ship's pixels, run-length encoded as in submission.csv."
    )


# ships.csv columns, in order: the record's fields.
SHIP_COLUMNS = tuple(ShipRecord.model_fields)


def ship_records(
    image_id: str,
    labels: np.ndarray,
    probabilities: np.ndarray,
    image_ship_probability: float | None = None,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
) -> list[ShipRecord]:
    """One record per ship of ``labels``, in label order.

    Args:
        image_id: The image's name (each record's ``ImageId``).
        labels: ``(h, w)`` label image: 0 for sea, ``k`` for ship ``k``.
        probabilities: ``(h, w)`` pixel probabilities.
        image_ship_probability: The ship head's probability for the image (None without one).
        pixel_size: Metres per pixel.
    """
    from skimage.measure import regionprops

    head = None if image_ship_probability is None else round(image_ship_probability, 4)
    height = labels.shape[0]
    return [  # by label; each ship's pixels from its box alone
        ShipRecord(
            ImageId=image_id,
            ship=region.label,
            **_measures(region.coords, probabilities, pixel_size),
            image_ship_probability=head,
            EncodedPixels=rle_encode_pixels(region.coords[:, 0], region.coords[:, 1], height),
        )
        for region in regionprops(labels)
    ]


def _measures(coords: np.ndarray, probabilities: np.ndarray, pixel_size: float) -> dict:
    """A ship's box and probabilities from its pixels' ``(n, 2)`` coordinates, rounded."""
    box = oriented_box(coords.astype(float))
    values = probabilities[coords[:, 0], coords[:, 1]]
    return {
        "row": round(float(box["centre"][0]), 2),
        "column": round(float(box["centre"][1]), 2),
        "length_px": round(box["length"], 2),
        "width_px": round(box["width"], 2),
        "length_m": round(box["length"] * pixel_size, 2),
        "width_m": round(box["width"] * pixel_size, 2),
        "heading_deg": round(box["heading"], 1),
        "area_px": len(coords),
        "mean_probability": round(float(values.mean()), 4),
        "max_probability": round(float(values.max()), 4),
        "corners": [[round(float(v), 2) for v in corner] for corner in box["corners"]],
    }


def oriented_box(coords: np.ndarray) -> dict:
    """The oriented box of pixel coordinates ``(n, 2)`` (row, column).

    Returns:
        ``{"centre", "length", "width", "heading", "corners"}``: the box's centre, the ship's
        length along the main axis and width across it (see the module), the axis's heading
        (degrees, see the module), and the box's four corners in order around it (every
        pixel lies inside).
    """
    centre = coords.mean(axis=0)
    if len(coords) > 1:
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov((coords - centre).T))
        along = eigenvectors[:, int(np.argmax(eigenvalues))]
    else:
        along = np.array([0.0, 1.0])
    across = np.array([-along[1], along[0]])
    a, b = (coords - centre) @ along, (coords - centre) @ across
    # Extents between pixel centres, widened by half a pixel on each side.
    a_low, a_high, b_low, b_high = a.min() - 0.5, a.max() + 0.5, b.min() - 0.5, b.max() + 0.5
    middle = centre + along * (a_low + a_high) / 2 + across * (b_low + b_high) / 2
    corners = [
        centre + along * s + across * t
        for s, t in ((a_low, b_low), (a_high, b_low), (a_high, b_high), (a_low, b_high))
    ]
    # Clockwise from up: east is +column, up is -row.
    heading = float(np.degrees(np.arctan2(along[1], -along[0]))) % 180.0
    length = float(a_high - a_low)
    return {
        "centre": middle,
        "length": length,
        "width": min(len(coords) / length, float(b_high - b_low)),
        "heading": heading,
        "corners": corners,
    }


def csv_text(records: Iterable[ShipRecord]) -> str:
    """The ships as ``ships.csv``: a header of the record's fields, then one row per ship.

    A null (``image_ship_probability`` without a ship head) is an empty cell; ``corners`` is
    its JSON (``[[row, column], ...]``).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SHIP_COLUMNS)
    for record in records:
        fields = record.model_dump(mode="json")
        fields["corners"] = json.dumps(fields["corners"])
        writer.writerow("" if value is None else value for value in fields.values())
    return buffer.getvalue()


def geojson(records: Iterable[ShipRecord]) -> str:
    """A GeoJSON FeatureCollection of the ships' boxes, in pixel coordinates (x = column, y = row).

    Each box's properties are its record's fields but ``corners`` (the polygon itself). To
    georeference, map each (x, y) through the image's affine transform (for example with
    rasterio: ``transform * (x, y)``) and set the collection's CRS to the image's.
    """
    features = []
    for record in records:
        properties = record.model_dump(mode="json")
        ring = [[column, row] for row, column in properties.pop("corners")]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                "properties": properties,
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features})
