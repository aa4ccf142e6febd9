"""The recipe's changes of image intensity: Gaussian blur, sharpness, and the per-pixel tone (gain, shift,
noise, clipping), on a stack of float32 images.

Each has a numpy version in whole-array passes and, with numba (useg.data.compiled), a compiled
loop that computes the same bits pixel by pixel.
"""

from __future__ import annotations

import numpy as np

from useg.data.compiled import compiled


def blur(stack: np.ndarray, sigmas: np.ndarray, reach: int) -> np.ndarray:
    """Separable Gaussian blur of each image by its own sigma over +-reach pixels, borders reflected
    (repeated where an image is no longer than `reach`). May change `stack` in place; returns the result."""
    kernel = compiled(_blur_pixels)
    if kernel is None:
        return blur_numpy(stack, sigmas, reach)
    _, height, width = stack.shape
    kernel(stack, blur_weights(sigmas, reach), padded_positions(height, reach), padded_positions(width, reach),
           np.empty(stack.shape[1:], np.float32), np.empty(width + 2 * reach, np.float32))
    return stack


def padded_positions(size: int, reach: int) -> np.ndarray:
    """Which position each place of an axis of `size` padded by `reach` at both ends reads, as blur_numpy pads."""
    return padded_stack(np.arange(size)[None], 1, reach, "reflect")[0]


def blur_weights(sigmas: np.ndarray, reach: int) -> np.ndarray:
    """(n, reach + 1) float32 taps of each sigma's kernel, from the centre out (the kernel sums to 1)."""
    taps = np.arange(reach + 1)
    weights = np.exp(-0.5 * (taps / sigmas[:, None]) ** 2)
    weights /= weights[:, :1] + 2 * weights[:, 1:].sum(axis=1, keepdims=True)
    weights[weights < 1e-20] = 0  # float32 denormals would make every pass ten times slower
    return weights.astype(np.float32)


def blur_numpy(stack: np.ndarray, sigmas: np.ndarray, reach: int) -> np.ndarray:
    weights = blur_weights(sigmas, reach)
    count, height, width = stack.shape
    padded = padded_stack(stack, 1, reach, "reflect").reshape(count, -1)  # each image one line, rows a width apart
    blurred = _symmetric_sum(padded, weights, width, height * width).reshape(stack.shape)
    # Along the rows, each image is one line too (its rows padded), so that every shifted window is one
    # contiguous run (row by row, numpy's loops are about twice as slow); what a window takes across two
    # rows lands in the padding columns of the result, which are dropped.
    padded = padded_stack(blurred, 2, reach, "reflect").reshape(count, -1)
    out = np.empty((count, height, width + 2 * reach), np.float32)
    size = padded.shape[1] - 2 * reach
    _symmetric_sum(padded, weights, 1, size, out=out.reshape(count, -1)[:, :size])
    return out[:, :, :width]


def _symmetric_sum(lines: np.ndarray, weights: np.ndarray, step: int, size: int,
                   out: np.ndarray | None = None) -> np.ndarray:
    """(n, size): sum over k of weights[:, k] * (the n lines shifted k * step back + shifted k * step on),
    read from window [reach * step, reach * step + size) of each line, reach = weights.shape[1] - 1."""
    reach = weights.shape[1] - 1
    centre = reach * step
    out = np.multiply(lines[:, centre:centre + size], weights[:, :1], out=out)
    pair = np.empty_like(out)
    for k in range(1, reach + 1):
        before, after = centre - k * step, centre + k * step
        np.add(lines[:, before:before + size], lines[:, after:after + size], out=pair)
        pair *= weights[:, k:k + 1]
        out += pair
    return out


def _blur_pixels(stack, weights, rows, cols, down, line):  # pragma: no cover (numba)
    """blur_numpy in place, image by image: down the columns into `down`, then along each row (padded into
    `line`) back into the stack, each output summed as numpy sums it: the centre tap, then each pair of
    mirrored taps. Innermost loops run along a row, which LLVM vectorizes. `rows`, `cols`: padded_positions."""
    count, height, width = stack.shape
    reach = weights.shape[1] - 1
    for i in range(count):
        image, taps = stack[i], weights[i]
        for y in range(height):
            out, centre = down[y], image[y]
            for x in range(width):
                out[x] = centre[x] * taps[0]
            for k in range(1, reach + 1):
                above, below, tap = image[rows[reach + y - k]], image[rows[reach + y + k]], taps[k]
                for x in range(width):
                    out[x] = out[x] + (above[x] + below[x]) * tap
        for y in range(height):
            out, source = image[y], down[y]
            for j in range(width + 2 * reach):
                line[j] = source[cols[j]]
            for x in range(width):
                out[x] = line[reach + x] * taps[0]
            for k in range(1, reach + 1):
                before, after, tap = line[reach - k:reach - k + width], line[reach + k:reach + k + width], taps[k]
                for x in range(width):
                    out[x] = out[x] + (before[x] + after[x]) * tap


def sharpen(stack: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """torchvision's adjust_sharpness: blend with the 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]] / 13 by
    `factor` (0 smooth, 1 unchanged, >1 sharper); the border repeats the edge pixels. In place."""
    on_image, on_box = sharpen_weights(factors)
    kernel = compiled(_sharpen_pixels)
    if kernel is None:
        return sharpen_numpy(stack, on_image, on_box)
    kernel(stack, on_image, on_box, np.empty(stack.shape[1:], np.float32))
    return stack


def sharpen_weights(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """factor * x + (1 - factor) * (box + 4 x) / 13 as one float32 weight on x and one on the 3x3 sum."""
    factor = factors.astype(np.float32)
    return factor + 4 * (1 - factor) / 13, (1 - factor) / 13


def sharpen_numpy(stack: np.ndarray, on_image: np.ndarray, on_box: np.ndarray) -> np.ndarray:
    padded = padded_stack(stack, 1, 1, "edge")
    columns = padded[:, :-2] + padded[:, 1:-1]
    columns += padded[:, 2:]
    padded = padded_stack(columns, 2, 1, "edge")
    del columns
    box = padded[:, :, :-2] + padded[:, :, 1:-1]
    box += padded[:, :, 2:]  # the 3x3 sum
    del padded
    box *= on_box[:, None, None]
    stack *= on_image[:, None, None]
    stack += box
    return stack


def _sharpen_pixels(stack, on_image, on_box, columns):  # pragma: no cover (numba)
    """sharpen_numpy in place, image by image: each pixel's column of three into `columns`, then along the
    rows; rows as one-dimensional views, so that LLVM vectorizes the innermost loops."""
    count, height, width = stack.shape
    for i in range(count):
        image, weight, box_weight = stack[i], on_image[i], on_box[i]
        for y in range(height):
            out, above, centre, below = columns[y], image[max(y - 1, 0)], image[y], image[min(y + 1, height - 1)]
            for x in range(width):
                out[x] = above[x] + centre[x] + below[x]
        for y in range(height):
            out, sums = image[y], columns[y]
            box = sums[0] + sums[0] + sums[min(1, width - 1)]  # the first column repeats itself on its left
            out[0] = out[0] * weight + box * box_weight
            for x in range(1, width - 1):
                out[x] = out[x] * weight + (sums[x - 1] + sums[x] + sums[x + 1]) * box_weight
            if width > 1:
                box = sums[width - 2] + sums[width - 1] + sums[width - 1]
                out[width - 1] = out[width - 1] * weight + box * box_weight


def tone(images: np.ndarray, linear: tuple[np.ndarray, np.ndarray] | None, bank: np.ndarray, starts: np.ndarray,
         stds: np.ndarray) -> None:
    """In place: each image times its gain plus its shift (`linear`; None: none), plus its window of `bank`
    from starts[i] times stds[i] where that is not 0, then clipped to [0, 1]."""
    kernel = compiled(_tone_pixels)
    if kernel is None:
        return tone_numpy(images, linear, bank, starts, stds)
    unchanged = (np.ones(len(images), np.float32), np.zeros(len(images), np.float32))
    gains, shifts = linear if linear is not None else unchanged
    kernel(images, linear is not None, gains, shifts, bank, np.asarray(starts, np.int64), stds.astype(np.float32),
           stds != 0)


def tone_numpy(images: np.ndarray, linear: tuple[np.ndarray, np.ndarray] | None, bank: np.ndarray,
               starts: np.ndarray, stds: np.ndarray) -> None:
    if linear is not None:
        images *= linear[0][:, None, None]
        images += linear[1][:, None, None]
    for image, std, start in zip(images, stds, starts):
        if std:
            image += bank[start:start + image.size].reshape(image.shape) * np.float32(std)
    np.clip(images, 0.0, 1.0, out=images)


def _tone_pixels(images, scaled, gains, shifts, bank, starts, stds, noisy):  # pragma: no cover (numba)
    """tone_numpy one pixel at a time: (x * gain + shift) + noise * std, clipped as np.clip clips."""
    count, height, width = images.shape
    zero, one = np.float32(0), np.float32(1)
    for i in range(count):
        image, gain, shift, std, add_noise = images[i], gains[i], shifts[i], stds[i], noisy[i]
        for y in range(height):
            row, noise = image[y], bank[starts[i] + y * width:starts[i] + (y + 1) * width]
            for x in range(width):
                value = row[x]
                if scaled:
                    value = value * gain
                    value = value + shift
                if add_noise:
                    value = value + noise[x] * std
                row[x] = min(max(value, zero), one)


def padded_stack(stack: np.ndarray, axis: int, reach: int, mode: str) -> np.ndarray:
    """`stack` extended by `reach` values at both ends of `axis`: mirrored ('reflect', -1 -> 1) or repeated."""
    size = stack.shape[axis]
    if mode == "reflect" and size > reach:
        before, after = np.arange(reach, 0, -1), np.arange(size - 2, size - 2 - reach, -1)
    else:
        before, after = np.zeros(reach, np.intp), np.full(reach, size - 1)
    return np.concatenate([stack.take(before, axis), stack, stack.take(after, axis)], axis=axis)
