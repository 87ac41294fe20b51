"""CoCa's networks (prodcat.models.coca): the navec token embedding tied to the caption logits, the image
encoders (a timm backbone's feature map, a small ViT), coca-pytorch's CoCa with them, and the Lightning
modules of stage 1 (CoCa's own loss) and stage 2 (an MLP head, or CoCa + classifier jointly). Importing this
module imports torch."""
from __future__ import annotations

import numpy as np

from prodcat.models.nn.heads import FeatureHead, mlp
from prodcat.models.nn.trainer import adamw_cosine, lightning

pl = lightning()


# -- networks --------------------------------------------------------------------------------------------
def _nn():
    from torch import nn

    return nn


class NavecEmbedding(_nn().Module):
    """Token embedding = navec-initialised (V x 300) table, then a learned 300 -> dim projection."""

    def __init__(self, matrix, dim):
        nn = _nn()
        super().__init__()
        self.weight = nn.Parameter(matrix.float().clone())
        self.proj = nn.Linear(matrix.shape[1], dim, bias=False)

    def forward(self, ids):
        import torch.nn.functional as F

        return self.proj(F.embedding(ids, self.weight, padding_idx=0))


class TiedOutput(_nn().Module):
    """CoCa's caption logits, tied to the factorised token embedding (as CoCa ties them)."""

    def __init__(self, emb: NavecEmbedding):
        super().__init__()
        self.emb = [emb]  # a plain list: the embedding is registered once, in CoCa.token_emb

    def forward(self, x):
        import torch.nn.functional as F

        emb = self.emb[0]
        return F.linear(x @ emb.proj.weight, emb.weight)


class TimmTokens(_nn().Module):
    """A timm backbone's last feature map as a sequence of image tokens (b, h*w, C)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.num_features

    def forward(self, x):
        return self.backbone.forward_features(x).flatten(2).transpose(1, 2)


class TinyViT(_nn().Module):
    """A small ViT trained from scratch: patch embedding, learned positions, pre-norm encoder layers."""

    def __init__(self, image_size=64, patch=8, dim=192, depth=4, heads=3):
        import torch

        nn = _nn()
        super().__init__()
        self.dim = dim
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.encoder(x))


class CocaNet(_nn().Module):
    """coca_pytorch.CoCa with the navec token embedding and an optional image encoder in front."""

    def __init__(self, matrix, image_dim, encoder, cfg):
        from coca_pytorch import CoCa

        super().__init__()
        dim = int(cfg["dim"])
        self.dim = dim
        self.image_dim = image_dim  # width of the image tokens (saved with the model)
        self.coca = CoCa(dim=dim, num_tokens=2, unimodal_depth=int(cfg["unimodal_depth"]),
                         multimodal_depth=int(cfg["multimodal_depth"]), dim_latents=int((cfg["dim_latents"] or dim)),
                         image_dim=image_dim, num_img_queries=int(cfg["num_img_queries"]),
                         dim_head=int(cfg["dim_head"]), heads=int(cfg["heads"]),
                         ff_mult=int(cfg["ff_mult"]), caption_loss_weight=float(cfg["caption_loss_weight"]),
                         contrastive_loss_weight=float(cfg["contrastive_loss_weight"]), pad_id=0)
        self.coca.token_emb = NavecEmbedding(matrix, dim)
        n_tokens = matrix.shape[0]
        self.coca.to_logits[-1] = (TiedOutput(self.coca.token_emb) if cfg["tied_output"]
                                   else _nn().Linear(dim, n_tokens, bias=False))
        self.coca.is_distributed = False  # its distributed branch mislabels the gathered batch: see `loss`
        self.encoder = encoder

    def image_tokens(self, image):
        return self.encoder(image) if self.encoder is not None else image

    def loss(self, text, image):
        """CoCa's caption + contrastive loss. Under DDP the contrastive term spans the batch gathered from
        every process (coca-pytorch's own distributed branch labels the gathered similarity matrix with the
        local batch's indices, which fails as soon as there are two processes)."""
        import torch
        import torch.distributed as dist

        coca = self.coca
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return coca(text, image_tokens=self.image_tokens(image), return_loss=True)
        from coca_pytorch.coca_pytorch import all_gather

        ce = torch.nn.functional.cross_entropy
        text, labels = text[:, :-1], text[:, 1:]
        text_embeds, text_tokens = coca.embed_text(text)
        image_embeds, image_tokens = coca.embed_image(image_tokens=self.image_tokens(image))
        for attn_ff, cross_attn in coca.multimodal_layers:
            text_tokens = cross_attn(attn_ff(text_tokens), image_tokens)
        caption = ce(coca.to_logits(text_tokens).transpose(1, 2), labels, ignore_index=coca.pad_id)
        latents = all_gather(torch.stack((coca.text_to_latents(text_embeds), coca.img_to_latents(image_embeds)), 1))
        text_latents, image_latents = latents.unbind(dim=1)
        # Every process computes the loss of the whole gathered batch, but its gradient reaches only its own
        # rows' latents, and DDP averages the processes' gradients: the rows' gradient is scaled back up by
        # the number of processes W. The temperature sees the whole loss in every process: its gradient is
        # scaled down by W first, so that it is exact too. The loss's value is unchanged.
        w = dist.get_world_size()
        temperature = coca.temperature / w + coca.temperature.detach() * (1 - 1 / w)
        sim = text_latents @ image_latents.t() * temperature.exp()
        target = torch.arange(sim.shape[0], device=sim.device)
        contrastive = (ce(sim, target) + ce(sim.t(), target)) * 0.5
        contrastive = contrastive * w - (contrastive * (w - 1)).detach()
        return caption * coca.caption_loss_weight + contrastive * coca.contrastive_loss_weight

    def features(self, text, image, has):
        """[text CLS embedding, image CLS embedding (zero without a photo), has-photo] per row."""
        text_emb, img_emb = self.coca(text, image_tokens=self.image_tokens(image), return_embeddings=True)
        has = has.to(img_emb.dtype).unsqueeze(1)
        return __import__("torch").cat([text_emb, img_emb * has, has], dim=1)


class Stage1Module(pl.LightningModule):
    def __init__(self, net, params):
        super().__init__()
        self.net, self.params = net, params

    def training_step(self, batch, _):
        loss = self.net.loss(batch["text"], batch["image"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(), "lr": float(self.params["lr"])}])


def _drop_image(feats, dim, p, training):
    """Image dropout: with probability p a row is shown as if it had no photo (trains the text-only path)."""
    import torch

    if not training or p <= 0:
        return feats
    drop = torch.rand(feats.shape[0], device=feats.device) < p
    feats = feats.clone()
    feats[drop, dim:] = 0.0
    return feats


class PairHead(FeatureHead):
    """Stage 2 (mlp): the shared feature head on frozen CoCa features [text, image * has, has], with image
    dropout (trains the text-only path)."""

    def __init__(self, dim, n_classes, params, mean=None, std=None):
        super().__init__(2 * dim + 1, n_classes, params, mean, std, lr_key="head_lr")
        self.dim = dim

    def prepare(self, feats, z):
        keep = _drop_image(feats, self.dim, float(self.params["image_dropout"]), self.training)
        # a missing image part stays exactly zero after standardising, as in training
        z = (keep - self.mean) / self.std
        z[:, self.dim:] = z[:, self.dim:] * keep[:, -1:].gt(0)
        return z


class JointModule(pl.LightningModule):
    """Stage 2 (joint): CoCa and the classifier trained together with a classification loss (plus CoCa's own
    loss on the rows with a photo, weighted by `joint_coca_weight`)."""

    def __init__(self, net, n_classes, params):
        super().__init__()
        self.net, self.params = net, params
        self.head = mlp(2 * net.dim + 1, n_classes, params["head"])
        self.norm = _nn().LayerNorm(2 * net.dim + 1)
        self.loss = _nn().CrossEntropyLoss(label_smoothing=float(params["label_smoothing"]))
        if float(params["joint_coca_weight"]) <= 0:  # the caption / contrastive layers get no gradient at all:
            coca = net.coca  # frozen, so that DDP does not wait for their gradients (same result on one process)
            tied = {id(p) for p in coca.token_emb.parameters()}
            for part in (coca.multimodal_layers, coca.to_logits, coca.text_to_latents, coca.img_to_latents):
                for param in part.parameters():
                    param.requires_grad_(id(param) in tied)
            coca.temperature.requires_grad_(False)

    def forward(self, text, image, has):
        feats = self.net.features(text, image, has)
        feats = _drop_image(feats, self.net.dim, float(self.params["image_dropout"]), self.training)
        return self.head(self.norm(feats))

    def training_step(self, batch, _):
        loss = self.loss(self(batch["text"], batch["image"], batch["has"]), batch["label"])
        w = float(self.params["joint_coca_weight"])
        if w > 0:
            h = batch["has"]
            photos = h.sum()
            if self.trainer.world_size > 1:  # the processes decide together: CoCa's loss gathers their rows
                import torch.distributed as dist

                dist.all_reduce(photos, op=dist.ReduceOp.MIN)
            if int(photos) > 1:
                loss = loss + w * self.net.loss(batch["text"][h], batch["image"][h])
            elif self.trainer.world_size > 1:  # a process with too few photos: every one takes part, weight 0
                loss = loss + 0.0 * self.net.loss(batch["text"], batch["image"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def predict_proba(self, data, batch_size: int, device=None) -> np.ndarray:
        """Class probabilities of `data` (a prodcat.models.coca.PairData), `batch_size` pairs at a time."""
        import torch

        device = device or torch.device("cpu")
        self.to(device).eval()
        out = []
        with torch.inference_mode():
            for batch in data.loader(batch_size * 2):
                batch = {k: v.to(device) for k, v in batch.items()}
                out.append(self(batch["text"], batch["image"], batch["has"]).float().softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.head[-1].out_features), np.float32)

    def configure_optimizers(self):
        lr = float(self.params["lr"])
        return adamw_cosine(self, self.params, [
            {"params": self.net.parameters(), "lr": lr * float(self.params["joint_coca_lr_mult"])},
            {"params": list(self.head.parameters()) + list(self.norm.parameters()), "lr": lr}])
