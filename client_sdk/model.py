"""The multimodal classifier MFCPL trains: per-modality encoders, attention fusion, classifier, g1 and g2.

Built from a federation's declared modalities (:class:`mfcpl.wire.schemas.FederationCreate`) by
:func:`build_model`. Any subset of modalities may be missing per sample (``present[m][i]`` False): a
missing modality's encoder is not run for that sample, its sequence positions are masked out of the
attention fusion (score -1e5 before the softmax) and its features are zero. See docs/algorithm.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfcpl.wire.schemas import FederationCreate, ModalityKind, ModalitySpec, ModelSettings, PrototypeSpace

PROTOTYPE_SPACES: tuple[str, ...] = get_args(PrototypeSpace)
DEFAULT_PROTOTYPE_SPACE: PrototypeSpace = "penultimate"
MASK_SCORE = -1e5  # attention score of a masked position (finite, so an all-masked row stays NaN-free)


@dataclass
class ModelOutput:
    """What one forward pass returns.

    ``s`` and ``u[m]`` live in the prototype space (see ``prototype_space``): the L2-normalised g1/g2
    outputs (``normalized``), the raw g1/g2 outputs (``projection``), or the classifier's penultimate
    layer and a g2 of that width (``penultimate``).
    """

    logits: Tensor  # [B, C]
    z: Tensor  # [B, heads * d] fused representation
    s: Tensor  # [B, d_p] fused embedding in prototype space
    h: dict[str, Tensor]  # [B, d] masked mean over time of each modality's encoder output (0 if missing)
    u: dict[str, Tensor]  # [B, d_p] g2(h^m) in prototype space (meaningless where the modality is missing)
    present: dict[str, Tensor]  # [B] bool
    penultimate: Tensor  # [B, classifier_hidden]
    proto_logits: Tensor | None  # [B, C] cosine classifier on s (``normalized`` space only)


class TimeSeriesEncoder(nn.Module):
    """[B, T, C] -> three Conv1d(k5, pad 2)-ReLU-MaxPool(2)-Dropout blocks (32/64/128) -> GRU(128 -> d)."""

    def __init__(self, channels: int, hidden: int, dropout: float, conv_init: str = "kaiming") -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        widths = [channels, 32, 64, 128]
        for cin, cout in zip(widths, widths[1:], strict=False):
            conv = nn.Conv1d(cin, cout, kernel_size=5, padding=2)
            if conv_init == "kaiming":
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                assert conv.bias is not None  # Conv1d's default bias=True
                nn.init.zeros_(conv.bias)
            blocks += [conv, nn.ReLU(), nn.MaxPool1d(2), nn.Dropout(dropout)]
        self.conv = nn.Sequential(*blocks)
        self.rnn = nn.GRU(128, hidden, batch_first=True)

    @staticmethod
    def out_len(shape: list[int]) -> int:
        return shape[0] // 2 // 2 // 2

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        seq = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.rnn(seq)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


class VectorEncoder(nn.Module):
    """[B, D] -> Linear(D -> d)-ReLU-Dropout-Linear(d -> d), a 1-step sequence."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))

    @staticmethod
    def out_len(shape: list[int]) -> int:
        return 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp(x.reshape(x.shape[0], -1)).unsqueeze(1)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


class TokenEncoder(nn.Module):
    """[B, L, D] token features -> GRU(D -> d). All-zero rows are padding (masked in the fusion)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(dim, hidden, batch_first=True)

    @staticmethod
    def out_len(shape: list[int]) -> int:
        return shape[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.rnn(x)
        valid = x.abs().sum(dim=-1) > 0
        valid[:, 0] |= ~valid.any(dim=1)  # a present but all-zero sequence keeps one position
        return out, valid


class TextEncoder(nn.Module):
    """[B, L] int64 token ids -> a transformers encoder from a local checkpoint -> Linear(hidden -> d) per token.

    Padding is token id ``pad_token_id`` (0 for BERT vocabularies). The transformer is frozen (eval mode,
    no gradient) unless ``trainable``; its weights are still part of the model's state.
    """

    def __init__(self, path: str, hidden: int, trainable: bool) -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError("text modalities need transformers, the `text` extra: "
                                      "pip install 'mfcpl[text]'", name=error.name) from error

        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        # safetensors only: a pickled pytorch_model.bin named by a federation config must never be loaded.
        self.backbone = AutoModel.from_pretrained(path, local_files_only=True, config=cfg, use_safetensors=True)
        self.pad_id = int(getattr(cfg, "pad_token_id", 0) or 0)
        self.trainable = trainable
        if not trainable:
            self.backbone.requires_grad_(False)
        self.proj = nn.Linear(int(cfg.hidden_size), hidden)

    @staticmethod
    def out_len(shape: list[int]) -> int:
        return shape[0]

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        valid = ids != self.pad_id
        valid[:, 0] |= ~valid.any(dim=1)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.backbone(input_ids=ids, attention_mask=valid.long()).last_hidden_state
        return self.proj(hidden), valid


def build_encoder(spec: ModalitySpec, settings: ModelSettings, finetune_text: bool) -> nn.Module:
    d = settings.hidden_dim
    if spec.kind == ModalityKind.TIMESERIES:
        if len(spec.shape) != 2:
            raise ValueError(f"modality {spec.name!r}: timeseries shape must be [T, C]; got {spec.shape}")
        if spec.shape[0] < 8:
            raise ValueError(f"modality {spec.name!r}: timeseries needs T >= 8 (three MaxPool(2)); got {spec.shape}")
        return TimeSeriesEncoder(spec.shape[1], d, settings.dropout, settings.conv_init)
    if spec.kind == ModalityKind.VECTOR:
        dim = 1
        for s in spec.shape:
            dim *= s
        return VectorEncoder(dim, d, settings.dropout)
    if spec.kind == ModalityKind.TOKENS:
        if len(spec.shape) != 2:
            raise ValueError(f"modality {spec.name!r}: tokens shape must be [L, D]; got {spec.shape}")
        return TokenEncoder(spec.shape[1], d)
    if spec.kind == ModalityKind.TEXT:
        if len(spec.shape) != 1:
            raise ValueError(f"modality {spec.name!r}: text shape must be [L]; got {spec.shape}")
        if not settings.text_encoder_path:
            raise ValueError(f"modality {spec.name!r}: text needs model.text_encoder_path (a local checkpoint)")
        return TextEncoder(settings.text_encoder_path, d, finetune_text)
    raise ValueError(f"unknown modality kind {spec.kind!r}")


class AttentionFusion(nn.Module):
    """scores = Linear(d -> A)-tanh-Linear(A -> H) over the concatenated sequences; masked softmax over time;
    z = the H attention-weighted sums, flattened to [B, H * d]."""

    def __init__(self, hidden: int, attention_dim: int, heads: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Linear(attention_dim, heads))

    def forward(self, seq: Tensor, valid: Tensor) -> Tensor:
        scores = self.score(seq).masked_fill(~valid.unsqueeze(-1), MASK_SCORE)  # [B, T, H]
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bth,btd->bhd", weights, seq).flatten(1)


def _mlp_head(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Linear(dim_out, dim_out))


class CosineHead(nn.Module):
    """logits_k = scale * cos(s, w_k): the class-separating term of the ``normalized`` prototype space."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim**-0.5)
        self.scale = scale

    def forward(self, s: Tensor) -> Tensor:
        return self.scale * F.normalize(s, dim=1, eps=1e-8) @ F.normalize(self.weight, dim=1, eps=1e-8).T


class MultimodalModel(nn.Module):
    def __init__(
        self,
        modalities: list[ModalitySpec],
        num_classes: int,
        settings: ModelSettings,
        prototype_space: PrototypeSpace = DEFAULT_PROTOTYPE_SPACE,
        finetune_text: bool = False,
        proto_head_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if prototype_space not in PROTOTYPE_SPACES:
            raise ValueError(f"prototype_space must be one of {PROTOTYPE_SPACES}; got {prototype_space!r}")
        self.specs = {m.name: m for m in modalities}
        self.num_classes = num_classes
        self.hidden_dim = settings.hidden_dim
        self.prototype_space: PrototypeSpace = prototype_space
        d, fused = settings.hidden_dim, settings.hidden_dim * settings.attention_heads
        self.fused_dim = fused
        self.encoders = nn.ModuleDict({m.name: build_encoder(m, settings, finetune_text) for m in modalities})
        self.fusion = AttentionFusion(d, settings.attention_dim, settings.attention_heads)
        self.classifier_body = nn.Sequential(
            nn.Linear(fused, settings.classifier_hidden), nn.ReLU(), nn.Dropout(settings.dropout)
        )
        self.classifier_out = nn.Linear(settings.classifier_hidden, num_classes)
        self.proto_dim = settings.classifier_hidden if prototype_space == "penultimate" else settings.proj_dim
        self.g1 = _mlp_head(fused, settings.proj_dim)
        self.shared_modality_head = settings.shared_modality_head
        if settings.shared_modality_head:
            self.g2 = nn.ModuleDict({"shared": _mlp_head(d, self.proto_dim)})
        else:
            self.g2 = nn.ModuleDict({m.name: _mlp_head(d, self.proto_dim) for m in modalities})
        self.proto_head = CosineHead(settings.proj_dim, num_classes, proto_head_scale) if (
            prototype_space == "normalized"
        ) else None

    @property
    def modalities(self) -> list[str]:
        return list(self.specs)

    def _encode(self, name: str, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Run encoder ``name`` on the present rows only; absent rows get zeros and an all-False mask."""
        batch = present.shape[0]
        encoder = self.encoders[name]
        length = encoder.out_len(self.specs[name].shape)  # type: ignore[operator]  # nn.Module attrs: Tensor | Module
        seq = torch.zeros(batch, length, self.hidden_dim, device=present.device)
        valid = torch.zeros(batch, length, dtype=torch.bool, device=present.device)
        rows = present.nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return seq, valid
        out, out_valid = encoder(x[rows])
        out = out * out_valid.unsqueeze(-1)
        return seq.index_copy(0, rows, out), valid.index_copy(0, rows, out_valid)

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        fill: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    ) -> ModelOutput:
        """``inputs[m]`` [B, *shape_m], ``present[m]`` [B] bool. ``fill[m] = (vectors [B, d], usable [B] bool)``
        (optional) stands in, as a 1-step sequence, for modality m where it is missing and ``usable``
        (PmcmFL's prototype completion)."""
        seqs, masks, h = [], [], {}
        for name in self.modalities:
            p = present[name].bool()
            seq, valid = self._encode(name, inputs[name], p)
            h[name] = (seq * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
            seqs.append(seq)
            masks.append(valid)
            if fill is not None and name in fill:
                vectors, usable = fill[name]
                use = usable.bool() & ~p
                seqs.append((vectors * use.unsqueeze(-1)).unsqueeze(1))
                masks.append(use.unsqueeze(1))
        z = self.fusion(torch.cat(seqs, dim=1), torch.cat(masks, dim=1))
        penultimate = self.classifier_body(z)
        logits = self.classifier_out(penultimate)
        u = {m: self.g2["shared" if self.shared_modality_head else m](h[m]) for m in self.modalities}
        proto_logits = None
        if self.prototype_space == "penultimate":
            s = penultimate
        else:
            s = self.g1(z)
            if self.prototype_space == "normalized":
                assert self.proto_head is not None
                proto_logits = self.proto_head(s)
                s = F.normalize(s, dim=1, eps=1e-8)
                u = {m: F.normalize(v, dim=1, eps=1e-8) for m, v in u.items()}
        return ModelOutput(
            logits=logits, z=z, s=s, h=h, u=u, present={m: present[m].bool() for m in self.modalities},
            penultimate=penultimate, proto_logits=proto_logits,
        )


def build_model(config: FederationCreate, seed: int | None = None) -> MultimodalModel:
    """The model a federation declares. With ``seed``, the initial weights are reproducible (the global
    torch RNG is left untouched)."""
    settings = config.model
    kwargs = {
        "modalities": list(config.modalities),
        "num_classes": config.num_classes,
        "settings": settings,
        "prototype_space": settings.prototype_space,
        "finetune_text": settings.finetune_text_encoder,
        "proto_head_scale": settings.proto_head_scale,
    }
    if seed is None:
        return MultimodalModel(**kwargs)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultimodalModel(**kwargs)  # type: ignore[arg-type]
