"""Classifier heads shared by the image and CoCa models: one MLP, one standardised-feature head."""
from __future__ import annotations

import numpy as np

from prodcat.models.nn.trainer import adamw_cosine, lightning


def mlp(in_dim: int, n_classes: int, head: dict):
    """Dropout(input) -> Linear -> GELU -> Dropout -> Linear (`hidden` 0: one Linear after the input dropout)."""
    from torch import nn

    hidden = int(head["hidden"])
    layers = [nn.Dropout(float(head["input_dropout"]))]
    layers += ([nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(float(head["dropout"])), nn.Linear(hidden, n_classes)]
               if hidden else [nn.Linear(in_dim, n_classes)])
    return nn.Sequential(*layers)


def robust_std(x):
    """Per-feature std for standardising, floored: a feature (almost) constant on the training rows (common
    after ReLU: mostly zeros) must not blow up on other rows."""
    std = x.std(0)
    return std.clamp_min(float(std.mean()) * 0.1 + 1e-6)


class FeatureHead(lightning().LightningModule):
    """The MLP on standardised features (mean/std of the training rows, kept as buffers so that a saved
    head predicts alone). `lr_key`: the setting holding its learning rate. Subclasses may transform the
    standardised features (`prepare`)."""

    def __init__(self, in_dim: int, n_classes: int, params: dict, mean=None, std=None, lr_key: str = "lr"):
        import torch
        from torch import nn

        super().__init__()
        self.params, self.lr_key = params, lr_key
        self.register_buffer("mean", torch.zeros(in_dim) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(in_dim) if std is None else std.float())
        self.net = mlp(in_dim, n_classes, params["head"])
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(params["label_smoothing"]))

    def prepare(self, feats, z):
        return z

    def forward(self, feats):
        return self.net(self.prepare(feats, (feats - self.mean) / self.std))

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.log("loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        import torch

        self.eval()
        with torch.inference_mode():
            return self(torch.from_numpy(feats)).softmax(-1).numpy()

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(), "lr": float(self.params[self.lr_key])}])
