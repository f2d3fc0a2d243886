"""Registering from Python: a PyTorch module and a scikit-learn estimator through their converters."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.errors import InvalidModelError, UsageError
from tinymlops.optimize.pipeline import register_model
from tinymlops.registry.converters import onnx_from_sklearn, onnx_from_torch


def test_torch_module_registers_and_matches(sqlite_workspace) -> None:
    import torch

    from tinymlops.edge.backends import open_backend

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    data = onnx_from_torch(module, x[:1])
    a = sqlite_workspace.registry.register("mlp", data, source="torch")
    assert a.info.parameters == sum(p.numel() for p in module.parameters())
    assert a.info.macs == 64 * 32 + 32 * 10
    ours = np.concatenate([open_backend(data).run(x[i : i + 1])[0] for i in range(5)])
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.allclose(ours, ref, atol=1e-5)


def test_sklearn_estimator_registers_and_is_evaluated(sqlite_workspace) -> None:
    import io

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target
    clf = LogisticRegression(max_iter=500).fit(x[:1200], y[:1200])
    data = onnx_from_sklearn(clf, 64)
    buf = io.BytesIO()
    np.savez(buf, x=x[1200:], y=y[1200:])
    result = register_model(sqlite_workspace, "logreg", data, dataset=buf.getvalue(), derive=False)
    metrics = result.evaluations[result.base.id]
    n = metrics["samples"]  # the eval config caps the samples used
    assert metrics["accuracy"] == pytest.approx(clf.score(x[1200 : 1200 + n], y[1200 : 1200 + n]), abs=1e-9)
    assert any(op.startswith("ai.onnx.ml::") for op in result.base.info.operators)


def test_converter_misuse_is_clear() -> None:
    with pytest.raises(UsageError, match=r"torch\.nn\.Module"):
        onnx_from_torch(object(), np.zeros((1, 3), np.float32))
    with pytest.raises(InvalidModelError, match="skl2onnx could not convert"):
        onnx_from_sklearn(object(), 3)
