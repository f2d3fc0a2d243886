"""Generated model inputs: what a recipe calibrates (and an evaluation runs) on when no dataset
is registered for the model.

The rows are deterministic from the seed, in the model's own input layout, float32, and the
first axis is always the sample axis (``n`` rows). They say nothing about the real input
distribution: a variant calibrated on them is recorded as such (``generated:seed=<n>``).
"""

from __future__ import annotations

import numpy as np

from tinymlops.errors import ConfigError, InvalidDatasetError
from tinymlops.spec.model_info import ModelInfo, TensorSpec

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def generated_inputs(info: ModelInfo, n: int, seed: int) -> np.ndarray:
    """``n`` float32 rows for the model's single input, drawn with ``numpy.random.default_rng(seed)``.

    * float inputs: standard normal;
    * quantized integer inputs (``TensorSpec.quantization`` set): uniform over the float range
      the integer type can represent, ``scale * (qmin - zero_point) .. scale * (qmax - zero_point)``.

    The shape is the input's :meth:`~TensorSpec.concrete_shape` with the leading (batch)
    dimension set to ``n`` — also when the model fixes its batch at 1 — and any other symbolic
    dimension set to 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of generated samples must be a positive integer, got {n!r}")
    spec = _single_input(info)
    if len(spec.shape) == 0:
        raise InvalidDatasetError(
            f"cannot generate inputs for scalar input '{spec.name}': there is no sample axis; "
            "register a dataset for this model"
        )
    shape = (n, *spec.concrete_shape(1)[1:])
    rng = np.random.default_rng(seed)
    if spec.quantization is not None and spec.dtype in _INT_DTYPES:
        scale, zero_point = spec.quantization
        limits = np.iinfo(np.dtype(spec.dtype))
        low = scale * (int(limits.min) - zero_point)
        high = scale * (int(limits.max) - zero_point)
        return rng.uniform(low, high, size=shape).astype(np.float32)
    if spec.dtype in _FLOAT_DTYPES:
        return rng.standard_normal(size=shape, dtype=np.float32)
    raise InvalidDatasetError(
        f"cannot generate inputs for input '{spec.name}' of dtype {spec.dtype}: only float inputs and "
        "quantized integer inputs can be generated (other values are usually indices, codes or text); "
        "register a dataset for this model"
    )


def _single_input(info: ModelInfo) -> TensorSpec:
    if len(info.inputs) != 1:
        names = ", ".join(t.name for t in info.inputs) or "none"
        raise InvalidDatasetError(
            f"generated inputs need a single-input model; this one has {len(info.inputs)} "
            f"inputs ({names}); register a dataset that feeds every input",
            inputs=[t.name for t in info.inputs],
        )
    return info.inputs[0]


__all__ = ["generated_inputs"]
