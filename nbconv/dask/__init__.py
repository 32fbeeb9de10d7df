"""nbconv on Dask arrays: batches, images and channel groups larger than one machine or one GPU.

``nbconv.dask.conv2d``, ``conv_transpose2d`` and ``nbconv.dask.grad.conv2d_input / conv2d_weight /
conv2d_bias`` take ``dask.array.Array`` inputs whose chunks are NumPy (or CuPy) arrays and return
lazy Dask arrays of the same chunk type. ``import nbconv`` never imports Dask; this module does
(``pip install "nbconv[dask]"``).

How the work is cut (``nbconv.dask._tiles``):

- **Batch chunks** are independent: one task per chunk.
- **Spatial chunks**: each output is computed by the task of the input chunk that holds the
  centre of its window, from its chunk plus the halo its windows reach (several later chunks when
  they are small), padded only at the image's edges: no output is computed twice or lost, for
  any stride, padding (``'same'`` too), dilation or chunking.
- **Channel chunks** hold whole groups and run with their slice of the weight (AlexNet's
  two-GPU split, for any ``groups``). A chunk boundary inside a group is moved to the group's
  start: those chunks are merged (``rechunk``), which moves their data once.
- **The weight and bias gradients** are sums over the batch and spatial tasks, added in a fixed
  binary tree: the same chunking gives the same bits on every run and scheduler.

Weight and bias may be plain arrays (put in every task) or Dask arrays (one chunk). Errors of
nbconv's validation are raised when the graph is built, not inside a worker.
"""

from __future__ import annotations

from typing import Any, Optional

import dask.array as da

from .._conv import conv2d as _conv2d
from . import grad
from ._graph import (
    assemble,
    channel_rechunked,
    check_input,
    chunk_meta,
    output_channel_chunks,
    single_chunk,
    validate,
)
from ._tiles import output_tiles

__all__ = ["conv2d", "conv_transpose2d", "grad"]


def _forward_block(block, w, b, *, cin_g, cout_g, pads, args, block_info=None):
    """One task: the block's groups (from its channel location) with their slice of the weight."""
    c0, c1 = block_info[0]["array-location"][1]
    g0, g1 = c0 // cin_g, c1 // cin_g
    b_tile = None if b is None else b[g0 * cout_g:g1 * cout_g]
    return _conv2d(block, w[g0 * cout_g:g1 * cout_g], b_tile, padding=pads, groups=g1 - g0, **args)


def conv2d(input: da.Array, weight: Any, bias: Optional[Any] = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> da.Array:
    """:func:`nbconv.conv2d` on a Dask array, as a lazy Dask array of the input's chunk type.

    ``input`` (N, C_in, H, W) may be chunked along any axis (see the module's docstring). The
    result keeps the batch chunks; its channel chunks are the input's (made whole groups) times
    the channel multiplier; its spatial chunks follow the input's, divided by the stride.

    Examples
    --------
    >>> import dask.array as da, numpy as np, nbconv, nbconv.dask
    >>> x = da.from_array(np.random.rand(4, 8, 32, 32), chunks=(2, 4, 16, 16))
    >>> w = np.random.rand(16, 1, 3, 3)
    >>> y = nbconv.dask.conv2d(x, w, padding=1, groups=8)      # lazy; 2 x 2 x 2 x 2 tasks
    >>> y.chunks
    ((2, 2), (8, 8), (16, 16), (16, 16))
    >>> bool(np.allclose(y.compute(), nbconv.conv2d(x.compute(), w, padding=1, groups=8)))
    True
    """
    op = "conv2d"
    check_input(op, "input", input)
    spec = validate(op, "conv2d", input=input, weight=weight, bias=bias, stride=stride, padding=padding,
                    dilation=dilation, groups=groups)
    x = channel_rechunked(input, spec.in_per_group)
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    pt, _, pl, _ = spec.padding
    rows = output_tiles(x.chunks[2], pt, kh, sh, dh, spec.out_size[0])
    cols = output_tiles(x.chunks[3], pl, kw, sw, dw, spec.out_size[1])
    out_channels = output_channel_chunks(x.chunks[1], spec.in_per_group, spec.out_per_group)
    w, b = single_chunk(weight), single_chunk(bias)
    args = dict(stride=spec.stride, dilation=spec.dilation)
    blocks = []
    for r in rows:
        line = []
        for c in cols:
            sub = x[:, :, r.in_start:r.in_stop, c.in_start:c.in_stop].rechunk({2: -1, 3: -1})
            line.append(sub.map_blocks(
                _forward_block, w, b, cin_g=spec.in_per_group, cout_g=spec.out_per_group,
                pads=((r.pad_near, r.pad_far), (c.pad_near, c.pad_far)), args=args,
                chunks=(x.chunks[0], out_channels, (r.out_stop - r.out_start,), (c.out_stop - c.out_start,)),
                dtype=spec.dtype, meta=chunk_meta(input)))
        blocks.append(line)
    return assemble(blocks)


def conv_transpose2d(input: da.Array, weight: Any, bias: Optional[Any] = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> da.Array:
    """:func:`nbconv.conv_transpose2d` on a Dask array, as a lazy Dask array of the input's chunk
    type: the input gradient of the ``conv2d`` it is the adjoint of (the same gather per result
    chunk), plus the bias. The result's spatial chunks are the input's times the stride.

    Examples
    --------
    >>> import dask.array as da, numpy as np, nbconv, nbconv.dask
    >>> x = da.from_array(np.random.rand(2, 4, 8, 8), chunks=(1, 4, 4, 4))
    >>> w = np.random.rand(4, 2, 3, 3)
    >>> y = nbconv.dask.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2)
    >>> y.shape, y.chunks[2]
    ((2, 4, 16, 16), (8, 8))
    >>> want = nbconv.conv_transpose2d(x.compute(), w, stride=2, padding=1, output_padding=1, groups=2)
    >>> bool(np.allclose(y.compute(), want))
    True
    """
    op = "conv_transpose2d"
    check_input(op, "input", input)
    spec = validate(op, "conv_transpose2d", input=input, weight=weight, bias=bias, stride=stride, padding=padding,
                    output_padding=output_padding, groups=groups, dilation=dilation)
    (sh, sw), (ho, wo) = spec.lhs_dilation, spec.out_size
    chunks = (grad.scaled_chunks(input.chunks[2], sh, ho), grad.scaled_chunks(input.chunks[3], sw, wo))
    (kh, kw), (dh, dw) = spec.kernel_size, spec.dilation
    forward_pads = (dh * (kh - 1) - spec.padding[0], dw * (kw - 1) - spec.padding[2])  # see _spec._transposed
    y = grad.input_gradient(input.shape[0], spec.out_channels, (ho, wo), weight, input, spec.lhs_dilation,
                            forward_pads, spec.dilation, spec.groups, chunks, chunk_meta(input))
    if bias is None:
        return y
    b = bias if isinstance(bias, da.Array) else da.from_array(bias, chunks=-1)
    return y + b[None, :, None, None]
