"""Explain a whole dataset in fixed-size chunks, sharded over every device (and host).

:func:`explain_dataset` streams ``data`` through an explainer ``explain(model, x, target)``
chunk by chunk:

* every chunk has the same shape (the last one is padded by repeating its last example,
  and the padding is dropped afterwards), so the explainer compiles **once**;
* each chunk's batch axis is split over the devices of a ``jax.sharding.Mesh``
  (``NamedSharding(mesh, P("batch"))``), the model's parameters are replicated, and
  the explainer runs under ``jax.jit`` with those input and output shardings;
* the next chunk is dispatched before the previous result is copied to the host, and
  results go straight into a preallocated array (or a memory-mapped ``.npy`` file at
  ``out``), so peak memory does not grow with the number of examples.

Several hosts (``jax.distributed``)
-----------------------------------
Each process runs the same script::

    import jax
    jax.distributed.initialize(coordinator_address="10.0.0.1:1234",
                               num_processes=2, process_id=i)   # i = 0, 1
    # On CPU the cross-process collectives use gloo (jax 0.10's default for
    # jax_cpu_collectives_implementation); tested with two processes on 127.0.0.1.
    maps = explain_dataset(explain, model, data)   # same data and model on every process

Every process holds the same ``data`` (or at least the same length and order) and
explains only its own contiguous shard: examples ``[p * S, (p + 1) * S)`` with
``S = ceil(N / process_count)`` and ``p = jax.process_index()``. The mesh spans
``jax.devices()`` (all processes), each step assembles one global batch of
``chunk_size * process_count`` examples with ``jax.make_array_from_process_local_data``,
and the maps are gathered with ``jax.experimental.multihost_utils.process_allgather``.
Process 0 returns (or writes) the full ``(N, H, W)`` result; the other processes
return ``None``. All processes take the same number of steps (shorter shards are padded),
because every step is a collective. Iterables of batches have no length known to all
processes in advance, so they are accepted on a single process only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlrp import _cache
from jaxlrp._cache import key_part
from jaxlrp._tracing import LinenModel, apply_checked, as_adapter, static_key
from jaxlrp._validation import check_positive_int
from jaxlrp.errors import ExplanationError
from jaxlrp.typing import Explainer

__all__ = ["batch_mesh", "explain_dataset"]



def batch_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: ``jax.devices()``)."""
    devs = np.asarray(jax.devices() if devices is None else devices, dtype=object).reshape(-1)
    return Mesh(devs, ("batch",))


def explain_dataset(
    explain: Explainer,
    model: Any,
    data: Any,
    *,
    chunk_size: int = 256,
    target: Any = "label",
    mesh: Mesh | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray | None:
    """Explain every example of ``data``, ``chunk_size`` examples per device step.

    Args:
      explain: ``explain(model, x, target) -> (B, H, W)`` (or ``(B, H, W, C)``), e.g.
        ``jaxlrp.cam.gradcam_pp`` or ``jaxlrp.explainers.get("hybrid")``; it must be
        traceable under ``jax.jit`` (every jaxlrp explainer is).
      model: an NNX module, a ``(linen_module, variables)`` pair or ``jaxlrp.linen(...)``.
      data: a :class:`jaxlrp.data.Dataset`; an ``(images, labels)`` pair of arrays; an
        images array (N, H, W, C); or an iterable of batches, each ``images`` or a tuple
        ``(images, labels, ...)`` of any batch size (single process only).
      chunk_size: examples per step and process; rounded up to a multiple of the number
        of this process's devices in the mesh. The last chunk is padded to this size.
      target: ``"label"`` (the dataset's labels), ``"predicted"`` (the model's argmax) or
        an (N,) int array (sized data only).
      mesh: the device mesh; its batch axis is sharded over all of its axes. Default
        :func:`batch_mesh` over ``jax.devices()``.
      out: path of a ``.npy`` file to write the maps to (memory-mapped; the return value
        is then the ``np.memmap``); default: an in-memory array.
      progress: show a progress bar (process 0 only).
    Returns:
      On process 0, the maps, shape ``(N,) + map shape``, in the order of ``data``;
      ``None`` on the other processes. Examples with a non-finite input raise
      :class:`ExplanationError` (before any device work for that chunk).
    """
    if not callable(explain):
        raise ExplanationError(
            f"explain: expected a function explain(model, x, target), got {type(explain).__name__}"
        )
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    mesh = batch_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise ExplanationError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    nproc, pid = jax.process_count(), jax.process_index()
    local = [d for d in mesh.devices.flat if d.process_index == pid]
    if not local:
        raise ExplanationError(f"mesh: has no device of this process (process {pid})")
    chunk = -(-chunk_size // len(local)) * len(local)
    batch_spec = P(tuple(mesh.axis_names))
    shard_batch = NamedSharding(mesh, batch_spec)
    replicated = NamedSharding(mesh, P())

    source = _Source.make(data, target, nproc, pid)
    rebuild, static, tree, key = _split_model(model)
    predicted = isinstance(target, str) and target == "predicted"
    fn = _sharded_call(explain, rebuild, static, key, predicted, shard_batch, replicated)
    tree = _replicate(tree, replicated, nproc)
    adapter = as_adapter(model)

    writer: _Writer | None = None
    num_classes = 0
    pending: tuple[Any, np.ndarray] | None = None
    bar = _progress(progress and pid == 0, source.total)
    try:
        for x, t, ids in source.chunks(chunk):
            if writer is None:
                spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
                num_classes = apply_checked(adapter, spec, "data").shape[-1]
            if t is not None:
                _check_labels(t, ids, num_classes)
            xg = _global(x, shard_batch, nproc)
            tg = None if t is None else _global(t, shard_batch, nproc)
            result = fn(tree, xg, tg)  # dispatched asynchronously
            if writer is None:
                writer = _Writer(out, source.total, result.shape[1:], result.dtype, pid == 0)
            if pending is not None:
                writer.write(*_gather(*pending, shard_batch, nproc))
            pending = (result, ids)
            if bar is not None:
                bar.update(int((ids >= 0).sum()))
        if pending is not None:
            writer.write(*_gather(*pending, shard_batch, nproc))
    finally:
        if bar is not None:
            bar.close()
    if writer is None:
        raise ExplanationError("data: contains no examples")
    return writer.finish()


# ----------------------------------------------------------------------------- the model


def _split_model(model: Any) -> tuple[Callable[[Any, Any], Any], Any, Any, Any]:
    """(rebuild, static, tree, key): ``rebuild(static, tree)`` is the model, ``tree`` holds
    its arrays, ``static`` the rest, and ``key`` identifies ``static`` (equal keys mean
    ``rebuild`` behaves the same)."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _merge_nnx, graphdef, state, ("nnx", graphdef)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        model = LinenModel(model[0], model[1])
    if isinstance(model, LinenModel):
        return (_rebuild_linen, (model.module, model.apply_kwargs), model.variables,
                static_key(as_adapter(model)))
    adapter = as_adapter(model)  # raises ExplanationError for anything unsupported
    return _same, adapter, None, ("adapter", key_part(adapter))


def _merge_nnx(graphdef: Any, state: Any) -> Any:
    return nnx.merge(graphdef, state)


def _rebuild_linen(static: tuple, variables: Any) -> LinenModel:
    return LinenModel(static[0], variables, static[1])


def _same(adapter: Any, _: Any) -> Any:
    return adapter


def _run(explain: Explainer, rebuild: Callable, static: Any, predicted: bool, tree: Any,
         x: jax.Array, t: jax.Array | None) -> jax.Array:
    return explain(rebuild(static, tree), x, "predicted" if predicted else t)


def _sharded_call(explain: Explainer, rebuild: Callable, static: Any, key: Any,
                  predicted: bool, shard_batch: NamedSharding,
                  replicated: NamedSharding) -> Callable:
    """``fn(tree, x, t)``: the explainer, sharded and jitted, cached in
    ``jaxlrp._cache.SHARDED`` so that repeated calls compile once. The cached function
    holds neither the explainer nor the model (they are weak parts of the key)."""
    cache_key = (key_part(explain), rebuild, key, predicted, shard_batch, replicated)
    jit_kwargs = dict(in_shardings=(replicated, shard_batch, shard_batch),
                      out_shardings=shard_batch)

    def fn(tree: Any, x: jax.Array, t: jax.Array | None) -> jax.Array:
        return _cache.jit_call(_cache.SHARDED, cache_key, _run,
                               (explain, rebuild, static, predicted), (tree, x, t),
                               **jit_kwargs)

    return fn


def _replicate(tree: Any, sharding: NamedSharding, nproc: int) -> Any:
    if tree is None:
        return None
    if nproc == 1:
        return jax.device_put(tree, sharding)

    def put(a: Any) -> jax.Array:
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree)


def _global(a: np.ndarray, sharding: NamedSharding, nproc: int) -> jax.Array:
    """This process's rows as (its part of) one global batch-sharded array."""
    if nproc == 1:
        return jax.device_put(a, sharding)
    return jax.make_array_from_process_local_data(sharding, a)


def _gather(result: jax.Array, ids: np.ndarray, sharding: NamedSharding,
            nproc: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps, example ids) of the whole global batch, on the host of every process."""
    if nproc == 1:
        return np.asarray(result), ids
    from jax.experimental import multihost_utils

    gids = _global(ids.astype(np.int32), sharding, nproc)
    values, all_ids = multihost_utils.process_allgather((result, gids), tiled=True)
    return np.asarray(values), np.asarray(all_ids)


# ----------------------------------------------------------------------------- the data


class _Source:
    """Fixed-size, padded chunks ``(x, t, ids)`` of this process's share of the data."""

    def __init__(self, images: Any, labels: Any, stream: Iterable | None, nproc: int,
                 pid: int):
        self.images, self.labels, self.stream = images, labels, stream
        self.nproc, self.pid = nproc, pid
        self.total = None if images is None else int(images.shape[0])

    @classmethod
    def make(cls, data: Any, target: Any, nproc: int, pid: int) -> _Source:
        images, labels, stream = None, None, None
        if hasattr(data, "images") and hasattr(data, "labels"):
            images, labels = data.images, data.labels
        elif (isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4
              and np.ndim(data[1]) == 1 and len(data[0]) == len(data[1])):
            images, labels = data
        elif hasattr(data, "shape") and hasattr(data, "ndim"):
            if data.ndim != 4:
                raise ExplanationError(
                    f"data: expected images (N, H, W, C), got shape {tuple(data.shape)}"
                )
            images = data
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
            stream = data
        else:
            raise ExplanationError(
                "data: expected a jaxlrp.data.Dataset, an (images, labels) pair, an images "
                f"array (N, H, W, C) or an iterable of batches, got {type(data).__name__}"
            )
        if stream is not None and nproc > 1:
            raise ExplanationError(
                f"data: with {nproc} processes, pass a Dataset or arrays (every process "
                "needs the dataset's length to take the same number of steps), not an iterable"
            )
        if images is not None and len(images) == 0:
            raise ExplanationError("data: contains no examples")
        if isinstance(target, str):
            if target not in ("label", "predicted"):
                raise ExplanationError(
                    f"target: expected 'label', 'predicted' or an (N,) int array, got {target!r}"
                )
            if target == "predicted":
                labels = None
            elif images is not None and labels is None:
                raise ExplanationError(
                    "target: 'label' needs labels, but data is an images array without labels;"
                    " pass (images, labels) or target='predicted'"
                )
        else:
            if images is None:
                raise ExplanationError(
                    "target: an array of targets needs sized data (a Dataset or arrays), "
                    "not an iterable; use target='label' with (images, labels) batches"
                )
            t = np.asarray(target)
            if t.shape != (len(images),) or not np.issubdtype(t.dtype, np.integer):
                raise ExplanationError(
                    f"target: expected 'label', 'predicted' or an int array of shape "
                    f"({len(images)},), got {t.dtype} array of shape {t.shape}"
                )
            labels = t
        src = cls(images, labels, stream, nproc, pid)
        src.want_labels = target != "predicted" if isinstance(target, str) else True
        return src

    def _range(self) -> tuple[int, int, int]:
        """(lo, hi, per): this process's rows [lo, hi) of a share of ``per`` rows."""
        n = self.total
        per = -(-n // self.nproc)
        lo = min(n, self.pid * per)
        return lo, min(n, lo + per), per

    def steps(self, chunk: int) -> int | None:
        if self.total is None:
            return None
        return -(-self._range()[2] // chunk)

    def chunks(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        if self.stream is not None:
            yield from self._stream_chunks(chunk)
            return
        lo, hi, _ = self._range()
        for s in range(self.steps(chunk)):
            a, b = min(hi, lo + s * chunk), min(hi, lo + (s + 1) * chunk)
            if b > a:
                x = _images(self.images[a:b], a)
                t = None if self.labels is None else np.asarray(self.labels[a:b])
            else:  # an empty tail of a short shard: padding only
                x = _images(self.images[:1], 0)
                t = None if self.labels is None else np.asarray(self.labels[:1])
            ids = np.arange(a, b, dtype=np.int64)
            yield _pad(x, t, ids, chunk)

    def _stream_chunks(self, chunk: int):
        xs: list[np.ndarray] = []
        ts: list[np.ndarray] = []
        have, start = 0, 0
        for batch in self.stream:
            x, t = _split_batch(batch, self.want_labels)
            x = _images(x, start + have)
            xs.append(x)
            if t is not None:
                ts.append(t)
            have += len(x)
            while have >= chunk:
                xa = np.concatenate(xs)
                ta = np.concatenate(ts) if ts else None
                yield _pad(xa[:chunk], None if ta is None else ta[:chunk],
                           np.arange(start, start + chunk), chunk)
                xs, ts = [xa[chunk:]], ([] if ta is None else [ta[chunk:]])
                have -= chunk
                start += chunk
        if have:
            xa = np.concatenate(xs)
            ta = np.concatenate(ts) if ts else None
            yield _pad(xa, ta, np.arange(start, start + have), chunk)


def _split_batch(batch: Any, want_labels: bool) -> tuple[Any, np.ndarray | None]:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ExplanationError("data: got an empty batch tuple")
        x = batch[0]
        t = np.asarray(batch[1]) if len(batch) > 1 and batch[1] is not None else None
    else:
        x, t = batch, None
    if want_labels and t is None:
        raise ExplanationError(
            "target: 'label' needs labels, but a batch has none; yield (images, labels) "
            "batches or pass target='predicted'"
        )
    if not want_labels:
        t = None
    elif np.shape(t) != (len(x),):
        raise ExplanationError(
            f"data: a batch has {len(x)} images but labels of shape {np.shape(t)}"
        )
    return x, t


def _images(x: Any, start: int) -> np.ndarray:
    """Host copy of a slice of images, checked: rank 4, floating, finite."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ExplanationError(f"data: expected images (B, H, W, C), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ExplanationError(
            f"data: expected floating images (float32, float16, bfloat16, float64), got "
            f"{x.dtype}; convert uint8 images with x.astype('float32') / 255"
        )
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = (np.flatnonzero(~finite) + start).tolist()
        raise ExplanationError(f"data: contains NaN or Inf values in example(s) {bad[:10]}")
    return x


def _pad(x: np.ndarray, t: np.ndarray | None, ids: np.ndarray,
         chunk: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Pad to ``chunk`` rows by repeating the last row; padded ids are -1."""
    pad = chunk - len(ids)
    if pad:
        x = np.concatenate([x[:len(ids)] if len(ids) else x[:1],
                            np.repeat(x[-1:], pad if len(ids) else pad - 1, axis=0)])
        if t is not None:
            t = np.concatenate([t[:len(ids)] if len(ids) else t[:1],
                                np.repeat(t[-1:], pad if len(ids) else pad - 1)])
        ids = np.concatenate([ids, np.full(pad, -1, ids.dtype)])
    t = None if t is None else t.astype(np.int32)
    return x, t, ids


def _check_labels(t: np.ndarray, ids: np.ndarray, num_classes: int) -> None:
    bad = (ids >= 0) & ((t < 0) | (t >= num_classes))
    if bad.any():
        raise ExplanationError(
            f"target: labels must lie in [0, {num_classes}), got {t[bad][:5].tolist()} for "
            f"example(s) {ids[bad][:5].tolist()}"
        )


# ----------------------------------------------------------------------------- the output


class _Writer:
    """Collects maps by example id into an array, a ``.npy`` memmap or (unsized data) a
    temporary file / list that becomes the result at the end."""

    def __init__(self, out: Any, total: int | None, shape: tuple, dtype: Any, active: bool):
        self.active, self.out, self.shape, self.dtype = active, out, tuple(shape), dtype
        self.count = 0
        self.array = self.parts = self.tmp = None
        if not active:
            return
        if total is not None:
            if out is None:
                self.array = np.empty((total,) + self.shape, dtype)
            else:
                self.array = np.lib.format.open_memmap(
                    os.fspath(out), mode="w+", dtype=dtype, shape=(total,) + self.shape)
        elif out is None:
            self.parts = []
        else:
            folder = os.path.dirname(os.path.abspath(os.fspath(out)))
            self.tmp = tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False)

    def write(self, values: np.ndarray, ids: np.ndarray) -> None:
        if not self.active:
            return
        keep = ids >= 0
        values, ids = values[keep], ids[keep]
        self.count += len(ids)
        if self.array is not None:
            if len(ids) and ids[-1] - ids[0] == len(ids) - 1 and (np.diff(ids) == 1).all():
                self.array[ids[0]:ids[-1] + 1] = values
            else:
                self.array[ids] = values
        elif self.parts is not None:
            self.parts.append(values)
        else:
            self.tmp.write(np.ascontiguousarray(values, self.dtype).tobytes())

    def finish(self) -> np.ndarray | None:
        if not self.active:
            return None
        if self.array is not None:
            if isinstance(self.array, np.memmap):
                self.array.flush()
            return self.array
        if self.parts is not None:
            return np.concatenate(self.parts)
        self.tmp.close()
        try:
            shape = (self.count,) + self.shape
            src = np.memmap(self.tmp.name, dtype=self.dtype, mode="r", shape=shape)
            dst = np.lib.format.open_memmap(os.fspath(self.out), mode="w+", dtype=self.dtype,
                                            shape=shape)
            step = max(1, (64 << 20) // max(1, src[:1].nbytes))
            for i in range(0, self.count, step):
                dst[i:i + step] = src[i:i + step]
            dst.flush()
            del src
        finally:
            os.unlink(self.tmp.name)
        return dst


def _progress(enabled: bool, total: int | None) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="ex", desc="explain_dataset", leave=False)
