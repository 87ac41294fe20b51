"""The image model's network for finetune mode (prodcat.models.image): a timm backbone and a linear head
trained end to end. Importing this module imports torch."""
from __future__ import annotations

from prodcat.models.nn.trainer import adamw_cosine, lightning


class FineTuneModule(lightning().LightningModule):
    """Backbone + linear head trained end to end; the backbone at a lower learning rate."""

    def __init__(self, backbone, n_classes, params):
        from torch import nn

        super().__init__()
        self.params = params
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(float(params["head"]["dropout"])),
                                  nn.Linear(backbone.num_features, n_classes))
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(params["label_smoothing"]))

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.log("train_loss", loss, prog_bar=True, sync_dist=False)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def configure_optimizers(self):
        lr = float(self.params["lr"])
        return adamw_cosine(self, self.params, [
            {"params": self.backbone.parameters(), "lr": lr * float(self.params["backbone_lr_mult"])},
            {"params": self.head.parameters(), "lr": lr}])
