"""Gate training data from a profile: prompt embeddings and each expert's choice distributions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.gate.encoder import Encoder
from controller.profile import Profile, ProfileError
from controller.suite import SuiteItem


@dataclass(frozen=True)
class SplitData:
    items: list[SuiteItem]
    embeddings: np.ndarray  # [samples, dim]
    probs: list[np.ndarray]  # per sample: [experts, choices]
    labels: np.ndarray  # [samples]

    @property
    def gold(self) -> np.ndarray:
        """[samples, experts]: each expert's probability of the gold answer."""
        return np.stack([p[:, y] for p, y in zip(self.probs, self.labels, strict=True)])

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class GateData:
    expert_keys: list[str]
    splits: dict[str, SplitData]

    @classmethod
    def from_profile(
        cls, profile: Profile, encoder: Encoder, keys: list[str] | None = None
    ) -> GateData:
        keys = keys or list(profile.experts)
        items = profile.complete_items(keys)
        if not items:
            raise ProfileError("the profile has no item measured on every expert")
        embeddings = encoder.encode([i.prompt for i in items])
        splits = {}
        for split in ("train", "val", "test"):
            index = [n for n, i in enumerate(items) if i.split == split]
            chosen = [items[n] for n in index]
            splits[split] = SplitData(
                items=chosen,
                embeddings=embeddings[index],
                probs=[
                    np.array([profile.records[i.id][k].choice_probs for k in keys]) for i in chosen
                ],
                labels=np.array([i.label for i in chosen], dtype=np.int64),
            )
        if len(splits["train"]) == 0 or len(splits["val"]) == 0:
            raise ProfileError("the profile needs measured items in both train and val splits")
        return cls(expert_keys=keys, splits=splits)
