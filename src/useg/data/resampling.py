"""The recipe's one resampling per warped image: bilinear for images, nearest for labels, 0 outside the source.

This is the costliest step of the in-context recipe (BENCHMARKS.md, "Recipe sampler: where a core's
time goes"). `resample_numpy` makes about thirty whole-array passes over each chunk of images; with
numba (useg.data.compiled) one compiled pass computes the same bits, pixel by pixel.

Maps are source positions of every output pixel in a source padded by one zero row and column before
and two after (pixel + 1), as float32 (n, H, W) arrays; both implementations clip them to the padded
source and overwrite them.
"""

from __future__ import annotations

import numpy as np

from useg.data.compiled import compiled


def resample(images: np.ndarray, labels: np.ndarray, part: np.ndarray, rows: np.ndarray,
             cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images[part] (float32) bilinearly and labels[part] (uint8) at the nearest pixel, at `rows`, `cols`."""
    if rows.dtype != np.float32 or cols.dtype != np.float32:  # the arithmetic both versions agree on
        raise TypeError(f"source positions must be float32, not {rows.dtype} and {cols.dtype}")
    kernel = compiled(_resample_pixels)
    if kernel is None:
        return resample_numpy(images, labels, part, rows, cols)
    out_images, out_labels = np.empty(rows.shape, np.float32), np.empty(rows.shape, np.uint8)
    kernel(*padded_sources(images, labels, part), rows, cols, out_images, out_labels)
    return out_images, out_labels


def _resample_pixels(padded, padded_labels, rows, cols, out_images, out_labels):  # pragma: no cover (numba)
    """`resample_numpy` on its padded sources, one output pixel at a time, with numpy's float32 operations
    in numpy's order. Indices are unsigned (no negative-index check) and flat (one multiply-add a read):
    twice as fast as two-dimensional signed ones."""
    count, height, width = rows.shape
    stride = np.uint64(padded.shape[2])
    plane, pixels, one = np.uint64(padded.shape[1]) * stride, np.uint64(height * width), np.uint64(1)
    source, source_labels = padded.ravel(), padded_labels.ravel()
    all_rows, all_cols, all_images, all_labels = rows.ravel(), cols.ravel(), out_images.ravel(), out_labels.ravel()
    zero, last_row, last_col, half = np.float32(0), np.float32(height + 1), np.float32(width + 1), np.float32(0.5)
    for i in range(count):
        first, start = np.uint64(i) * plane, np.uint64(i) * pixels
        for pixel in range(pixels):
            j = start + np.uint64(pixel)
            row = min(max(all_rows[j], zero), last_row)  # np.clip
            col = min(max(all_cols[j], zero), last_col)
            top, left = np.uint64(row), np.uint64(col)  # floor: both are >= 0
            row_fraction, col_fraction = row - np.float32(top), col - np.float32(left)
            k = first + top * stride + left  # the top left neighbour
            upper = source[k]
            step = (source[k + one] - upper) * col_fraction
            upper = upper + step
            lower = source[k + stride]
            step = (source[k + stride + one] - lower) * col_fraction
            lower = lower + step
            all_images[j] = upper + (lower - upper) * row_fraction
            nearest = k + stride * np.uint64(row_fraction >= half) + np.uint64(col_fraction >= half)
            all_labels[j] = source_labels[nearest]


def padded_sources(images: np.ndarray, labels: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images[part] and labels[part] with one zero row and column before and two after: every read of a
    position clipped to [0, size + 1] and of its next neighbour stays inside."""
    _, height, width = images.shape
    padded = np.zeros((len(part), height + 3, width + 3), np.float32)
    padded_labels = np.zeros(padded.shape, np.uint8)
    for i, k in enumerate(part):
        padded[i, 1:height + 1, 1:width + 1] = images[k]
        padded_labels[i, 1:height + 1, 1:width + 1] = labels[k]
    return padded, padded_labels


def resample_numpy(images: np.ndarray, labels: np.ndarray, part: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`resample` in whole-array passes, written to keep few arrays alive at once: the work is bound by
    cache misses, not arithmetic."""
    _, height, width = images.shape
    padded, padded_labels = padded_sources(images, labels, part)
    tall, stride = padded.shape[1:]
    np.clip(rows, 0, height + 1, out=rows)  # beyond the zero border reads the zero border
    np.clip(cols, 0, width + 1, out=cols)
    exact = np.float32 if padded.size < 2**24 else np.float64  # the flat index must be an exact float
    index = np.floor(rows).astype(exact, copy=False)
    rows -= index  # now the fractions between neighbours
    nearest = np.floor(cols).astype(exact, copy=False)
    cols -= nearest
    index += (np.arange(len(part)) * tall).astype(exact)[:, None, None]
    index *= stride
    index += nearest  # the top left neighbour's, in the flat padded stack
    np.add(index, cols >= 0.5, out=nearest)  # the label's pixel: the neighbour nearest to the position
    nearest += (rows >= 0.5) * exact(stride)
    index = index.astype(np.intp)
    flat = padded.reshape(-1)
    upper, step = flat.take(index, mode="clip"), flat[1:].take(index, mode="clip")  # (all indices are valid)
    step -= upper
    step *= cols
    upper += step
    lower = flat[stride:].take(index, mode="clip")
    flat[stride + 1:].take(index, out=step, mode="clip")
    step -= lower
    step *= cols
    lower += step
    del step, index
    lower -= upper
    lower *= rows
    upper += lower
    del lower
    return upper, padded_labels.reshape(-1).take(nearest.astype(np.intp), mode="clip")
