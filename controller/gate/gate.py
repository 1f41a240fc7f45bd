"""The trained gate as the controller uses it: prompt text in, one logit per expert out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from controller.gate.encoder import ENCODER_NAME, Encoder, PromptEncoder
from controller.gate.errors import GateError
from controller.gate.network import GateNet


@dataclass
class Gate:
    net: GateNet
    expert_keys: list[str]
    fleet: str
    profile_sha256: str
    encoder: Encoder | None = None  # None: a PromptEncoder, made at the first prompt

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": "moe2-gate/1",
                "encoder": ENCODER_NAME,
                "in_features": self.net.in_features,
                "hidden": self.net.hidden,
                "expert_keys": self.expert_keys,
                "fleet": self.fleet,
                "profile_sha256": self.profile_sha256,
                "state_dict": self.net.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path, encoder: Encoder | None = None) -> Gate:
        if not path.is_file():
            raise GateError(f"gate checkpoint {path} does not exist (train one: moe2 gate train)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a corrupt file
            raise GateError(f"gate checkpoint {path} cannot be read: {exc}") from None
        if not isinstance(blob, dict) or blob.get("format") != "moe2-gate/1":
            raise GateError(f"{path} is not a moe2 gate checkpoint")
        if blob["encoder"] != ENCODER_NAME:
            raise GateError(f"{path} was trained on encoder {blob['encoder']}, not {ENCODER_NAME}")
        net = GateNet(blob["in_features"], len(blob["expert_keys"]), blob["hidden"])
        net.load_state_dict(blob["state_dict"])
        net.eval()
        return cls(net, list(blob["expert_keys"]), blob["fleet"], blob["profile_sha256"], encoder)

    def _encoder(self) -> Encoder:
        if self.encoder is None:
            self.encoder = PromptEncoder()
        return self.encoder

    def logits(self, prompts: list[str]) -> np.ndarray:
        """[prompts, experts] logits, experts in ``expert_keys`` order."""
        return self.logits_of_embeddings(self.embed(prompts))

    def embed(self, prompts: list[str]) -> np.ndarray:
        """[prompts, features] float32 embeddings, the gate's input."""
        return self._encoder().encode(prompts)

    def logits_of_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.from_numpy(embeddings)).numpy().astype(np.float64)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
