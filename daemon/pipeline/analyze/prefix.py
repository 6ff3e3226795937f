"""CLIP's text encoder run incrementally, for the greedy chain of ``interrogate``.

CLIP's text transformer is causal: a token sees only the tokens before it, and the embedding
of a text is the final state of its end marker. So the states of a prompt do not depend on
what follows it, and "prompt, phrase" can be encoded by keeping the prompt's attention keys
and values and running only ", phrase" and the end marker through the layers. A chain step
that tries eight phrases then costs about forty tokens instead of eight whole prompts.

Built from the model's own modules (embeddings, each layer's attention, MLP and norms, the
final norm and the projection), so it computes exactly what ``get_text_features`` does; the
interrogator checks that once per model and falls back to whole prompts if it ever does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (1, heads, tokens, head_dim)


@dataclass(frozen=True, eq=False)
class Prefix:
    """A prompt's tokens (start marker first, no end marker) and each layer's keys and values."""

    ids: tuple[int, ...]
    cache: tuple[KV, ...]


class PrefixEncoder:
    """Encodes texts that share a prompt, paying for the prompt once."""

    def __init__(self, model: Any) -> None:
        text = model.text_model
        self._embeddings = text.embeddings
        self._layers = list(text.encoder.layers)
        self._final = text.final_layer_norm
        self._projection = model.text_projection
        self._device = self._projection.weight.device
        self.max_tokens = int(self._embeddings.position_embedding.num_embeddings)

    def start(self, ids: list[int]) -> Prefix:
        """The prompt ``ids`` (start marker first, no end marker) run through the layers."""
        empty = Prefix((), ())
        return self.extend(empty, ids)

    def open(self, ids: list[int], eos: int) -> tuple[Prefix, torch.Tensor]:
        """The prompt ``ids`` (start marker first) run once with the end marker after it: its
        states without the end marker, and its own normalised embedding (CPU, float32)."""
        empty = Prefix((), ())
        embeds, fresh = self.embed_after(empty, [[*ids, eos]])
        return adopt(empty, fresh, 0, ids), embeds[0]

    def extend(self, prefix: Prefix, ids: list[int]) -> Prefix:
        """``prefix`` followed by ``ids``: only the new tokens are computed."""
        if not ids:
            return prefix
        with torch.inference_mode():
            _, fresh = self._run(prefix, [ids])
        return adopt(prefix, fresh, 0, ids)

    def embed_after(
        self, prefix: Prefix, suffixes: list[list[int]]
    ) -> tuple[torch.Tensor, tuple[KV, ...]]:
        """Normalised float32 CPU embeddings of ``prefix + suffix`` for each suffix (each
        ending with the end marker), one row per suffix; and the suffixes' keys and values,
        for ``adopt``."""
        with torch.inference_mode():
            hidden, fresh = self._run(prefix, suffixes)
            rows = torch.arange(len(suffixes), device=hidden.device)
            last = torch.tensor([len(s) - 1 for s in suffixes], device=hidden.device)
            projected = self._projection(self._final(hidden[rows, last]))
        return torch.nn.functional.normalize(projected.float(), dim=-1).cpu(), fresh

    def _run(self, prefix: Prefix, rows: list[list[int]]) -> tuple[torch.Tensor, tuple[KV, ...]]:
        """Hidden states of ``rows`` (right-padded; padding comes after each row's last token,
        so causal attention keeps it out) after ``prefix``, and their keys and values."""
        past = len(prefix.ids)
        width = max(len(row) for row in rows)
        if past + width > self.max_tokens:
            raise ValueError(f"{past + width} tokens exceed the model's {self.max_tokens}")
        device = self._device
        ids = torch.tensor([row + [row[-1]] * (width - len(row)) for row in rows], device=device)
        positions = torch.arange(past, past + width, device=device).unsqueeze(0)
        x = self._embeddings(input_ids=ids, position_ids=positions)
        allowed = torch.ones(width, past + width, dtype=torch.bool, device=device)
        allowed[:, past:] = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        fresh = []
        for index, layer in enumerate(self._layers):
            attention = layer.self_attn
            h = layer.layer_norm1(x)
            q, k, v = (
                proj(h)
                .view(len(rows), width, attention.num_heads, attention.head_dim)
                .transpose(1, 2)
                for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
            )
            fresh.append((k, v))
            if prefix.cache:
                pk, pv = prefix.cache[index]
                k = torch.cat((pk.expand(len(rows), -1, -1, -1), k), dim=2)
                v = torch.cat((pv.expand(len(rows), -1, -1, -1), v), dim=2)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, scale=attention.scale
            )
            out = out.transpose(1, 2).reshape(len(rows), width, -1)
            x = x + attention.out_proj(out)
            x = x + layer.mlp(layer.layer_norm2(x))
        return x, tuple(fresh)


def adopt(prefix: Prefix, fresh: tuple[KV, ...], row: int, ids: list[int]) -> Prefix:
    """``prefix`` followed by row ``row``'s first ``len(ids)`` tokens, whose keys and values
    ``fresh`` already holds (no forward pass)."""
    n = len(ids)
    new = [(k[row : row + 1, :, :n], v[row : row + 1, :, :n]) for k, v in fresh]
    if prefix.cache:
        cache = tuple(
            (torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2))
            for (pk, pv), (k, v) in zip(prefix.cache, new, strict=True)
        )
    else:
        cache = tuple(new)
    return Prefix((*prefix.ids, *ids), cache)
