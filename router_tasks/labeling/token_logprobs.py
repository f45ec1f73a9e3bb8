"""Token-level log-probabilities for the bundled server: recorded during greedy generation,
and each token's exact bytes (OpenAI's `logprobs.content[].bytes`)."""

from __future__ import annotations


class TopLogprobs:
    """A logits processor that records each step's top log-probabilities and changes nothing.

    Only the top `k` per step are kept (a whole vocabulary per step would cost hundreds of
    MB for a batch of long replies); greedy decoding picks the first of them."""

    def __init__(self, k: int):
        self.k = max(1, int(k))
        self.steps: list = []

    def __call__(self, input_ids, scores):
        import torch

        values, ids = torch.log_softmax(scores.float(), dim=-1).topk(self.k, dim=-1)
        self.steps.append((values.cpu(), ids.cpu()))
        return scores


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in characters -> the bytes they stand for (GPT-2's table)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=False)}


_BYTES = _byte_decoder()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The exact bytes of one token (a token can hold part of a multi-byte character)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is not None and all(ch in _BYTES for ch in piece):
        return bytes(_BYTES[ch] for ch in piece)
    return tokenizer.decode([int(token_id)]).encode("utf-8")
