"""Forward API shared by DyMN and MN (timm-style split into features, intermediates and head)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

NUM_FEATURE_MAPS = 17  # stem, 15 blocks, final 1x1 conv


def mlp_head(in_features: int, hidden: int, num_classes: int, dropout: float = 0.2) -> nn.Sequential:
    """EfficientAT's "mlp" head; indices (2 and 5 hold weights) are part of the checkpoint keys."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(in_features, hidden),
        nn.Hardswish(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def init_weights(model: nn.Module) -> None:
    """EfficientAT's initialisation (only matters for training from scratch)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class AudioMobileNet(nn.Module):
    """Common interface. Subclasses provide ``stages()`` (the 17 modules in order) and ``classifier``.

    Input everywhere: log-mel ``(batch, 1, n_mels, frames)``.
    """

    arch: str
    num_features: int  # channels of forward_features output
    feature_info: list[dict]  # one entry per feature map: module, num_chs, reduction
    classifier: nn.Sequential

    def stages(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def _build_feature_info(self, module_names: Sequence[str], channels: Sequence[int], strides: Sequence[int]) -> None:
        info, reduction = [], 1
        for name, chs, stride in zip(module_names, channels, strides):
            reduction *= stride
            info.append({"index": len(info), "module": name, "num_chs": int(chs), "reduction": reduction})
        self.feature_info = info
        self.num_features = int(channels[-1])

    @property
    def num_classes(self) -> int:
        return self.classifier[5].out_features

    def _iter_maps(self, x: Tensor, stop: int) -> Iterator[Tensor]:
        for index, stage in enumerate(self.stages()):
            if index > stop:
                return
            x = stage(x)
            yield x

    def forward_features(self, x: Tensor) -> Tensor:
        """Final unpooled feature map ``(batch, num_features, n_mels/32, frames/32)``."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
        """Feature maps in upstream's ``return_fmaps`` order: 0 = stem, 1..15 = blocks, 16 = final 1x1 conv.

        Args:
            x: log-mel ``(batch, 1, n_mels, frames)``.
            indices: which maps to return (negative indices count from the end); all 17 when None. The
                forward pass stops after the deepest requested map.
        Returns:
            The requested maps, in the order of ``indices``.
        """
        wanted = list(range(NUM_FEATURE_MAPS)) if indices is None else [self._check_index(i) for i in indices]
        if not wanted:
            return []
        maps = list(self._iter_maps(x, max(wanted)))
        return [maps[i] for i in wanted]

    @staticmethod
    def _check_index(index: int) -> int:
        if not -NUM_FEATURE_MAPS <= index < NUM_FEATURE_MAPS:
            raise IndexError(f"feature map index {index} out of range; there are {NUM_FEATURE_MAPS} maps (0..16)")
        return index % NUM_FEATURE_MAPS

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled embedding ``(batch, num_features)`` if ``pre_logits`` else logits ``(batch, num_classes)``."""
        if pre_logits:
            return self.classifier[1](self.classifier[0](x))
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer (``classifier.5``) for ``num_classes`` outputs."""
        hidden = self.classifier[5].in_features
        device = self.classifier[5].weight.device
        self.classifier[5] = nn.Linear(hidden, num_classes, device=device)
        nn.init.normal_(self.classifier[5].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[5].bias)
