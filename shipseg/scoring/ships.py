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

import json

import numpy as np

# ships.csv columns, in order.
SHIP_COLUMNS = (
    "ImageId",
    "ship",
    "row",
    "column",
    "length_px",
    "width_px",
    "length_m",
    "width_m",
    "heading_deg",
    "area_px",
    "mean_probability",
    "max_probability",
    "image_ship_probability",
    "corners",
)
# Airbus imagery: 1.5 m per pixel.
DEFAULT_PIXEL_SIZE = 1.5


def ship_records(
    image_id: str,
    labels: np.ndarray,
    probabilities: np.ndarray,
    image_ship_probability: float | None = None,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
) -> list[dict]:
    """One record per ship of ``labels`` (see ``SHIP_COLUMNS``; ``corners`` as (row, column))."""
    from skimage.measure import regionprops

    records = []
    for region in regionprops(labels):  # by label; each ship's pixels from its box alone
        coords = region.coords.astype(float)
        box = oriented_box(coords)
        values = probabilities[region.coords[:, 0], region.coords[:, 1]]
        records.append(
            {
                "ImageId": image_id,
                "ship": region.label,
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
                "image_ship_probability": (
                    None if image_ship_probability is None else round(image_ship_probability, 4)
                ),
                "corners": [[round(float(v), 2) for v in corner] for corner in box["corners"]],
            }
        )
    return records


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


def geojson(records: list[dict]) -> str:
    """A GeoJSON FeatureCollection of the ships' boxes, in pixel coordinates (x = column, y = row).

    To georeference, map each (x, y) through the image's affine transform (for example with
    rasterio: ``transform * (x, y)``) and set the collection's CRS to the image's.
    """
    features = []
    for record in records:
        ring = [[corner[1], corner[0]] for corner in record["corners"]]
        properties = {key: value for key, value in record.items() if key != "corners"}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                "properties": properties,
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features})
