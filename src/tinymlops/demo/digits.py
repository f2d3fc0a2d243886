"""A small CNN trained on scikit-learn's real 8×8 handwritten digits (used by the demo, the
benchmarks and the tests). Deterministic for a given seed on one machine."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DigitsModel:
    onnx: bytes
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_accuracy: float
    parameters: int

    def npz(self, split: str) -> bytes:
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        return buf.getvalue()


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train_digits_cnn(seed: int = 0, epochs: int = 30, width: int = 16) -> DigitsModel:
    """Train conv(width)→relu→conv(2·width)→relu→pool→fc(10) on the digits; export ONNX."""
    import torch
    from torch import nn

    from tinymlops.registry.converters import onnx_from_torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    onnx_bytes = onnx_from_torch(model, x_te[:1])
    params = sum(p.numel() for p in model.parameters())
    return DigitsModel(onnx_bytes, x_tr, y_tr, x_te, y_te, acc, params)
