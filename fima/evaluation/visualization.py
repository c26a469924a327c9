"""A confusion matrix as a PNG with readable class names (Pillow only, no plotting library)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from fima.utils.visualization import font, save_png, text_size


def render_confusion_matrix(
    confusion: np.ndarray, class_names: list[str], path: str, title: str = ""
) -> Image.Image:
    """Draw ``confusion`` ``[C, C]`` (rows: true class, columns: predicted) and save it to ``path``.

    Each row is normalised by its number of videos (white 0 to dark blue 1); the diagonal is the
    per-class accuracy. Row names are on the left, column names on top (rotated), each with its
    class index; counts are printed in the cells when the matrix is small enough to read them.

    Returns:
        The image (RGB).
    """
    num_classes = confusion.shape[0]
    face = font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    label_w = max(text_size(probe, label, face)[0] for label in labels) + 8
    text_h = max(text_size(probe, label, face)[1] for label in labels)
    show_counts = num_classes <= 30
    count_w = text_size(probe, str(int(confusion.max(initial=0))), face)[0]
    cell = max(text_h + 4, 14, count_w + 6 if show_counts else 0)
    margin = 10
    title_h = text_h + 2 * margin
    axis_h = text_h + margin
    left = margin + axis_h + label_w
    top = title_h + axis_h + label_w
    predicted, true = "predicted class", "true class"
    width = (
        max(
            left + num_classes * cell,
            left + text_size(probe, predicted, face)[0],
            margin + text_size(probe, title, face)[0],
        )
        + margin
    )
    height = top + num_classes * cell + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    rows = confusion.sum(axis=1, keepdims=True)
    fraction = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    for r in range(num_classes):
        for c in range(num_classes):
            level = float(fraction[r, c])
            # White to dark blue (8, 48, 107).
            colour = tuple(int(round(255 + (d - 255) * level)) for d in (8, 48, 107))
            x0, y0 = left + c * cell, top + r * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline="#dddddd")
            if show_counts and confusion[r, c]:
                text = str(int(confusion[r, c]))
                tw, th = text_size(draw, text, face)
                ink = "white" if level > 0.5 else "black"
                draw.text(
                    (x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 1), text, fill=ink, font=face
                )

    for i, label in enumerate(labels):
        tw, th = text_size(draw, label, face)
        draw.text(
            (left - tw - 4, top + i * cell + (cell - th) / 2 - 1), label, fill="black", font=face
        )
        # Column labels: drawn horizontally on a strip, then rotated to read bottom-up.
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((4, (cell - th) / 2 - 1), label, fill="black", font=face)
        image.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w))

    if title:
        draw.text((margin, margin), title, fill="black", font=face)
    tw, _ = text_size(draw, predicted, face)
    draw.text(
        (left + max(num_classes * cell - tw, 0) / 2, title_h), predicted, fill="black", font=face
    )
    tw, th = text_size(draw, true, face)
    strip = Image.new("RGB", (tw + 2, th + 4), "white")
    ImageDraw.Draw(strip).text((0, 0), true, fill="black", font=face)
    image.paste(strip.rotate(90, expand=True), (margin, top + (num_classes * cell - tw) // 2))

    save_png(image, path)
    return image
