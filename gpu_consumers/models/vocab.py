"""Tokenizers written from a small local vocabulary, for the offline model profile.

No machine here can download a tokenizer from a hub, so the offline profile writes its own:

* a CLIP byte-level BPE (``vocab.json`` + ``merges.txt``), the files a real CLIP tokenizer ships,
  loaded with ``CLIPTokenizer.from_pretrained`` like any downloaded one;
* a byte-level BPE for the tiny causal LM, trained with the ``tokenizers`` library on a few local
  sentences and wrapped in ``Qwen2Tokenizer`` (a ``PreTrainedTokenizerFast``) with a ChatML chat
  template (the format of the production instruct model, so ``system_prompt`` goes through
  ``apply_chat_template`` the same way in both profiles).

Both are deterministic: the same inputs always give byte-identical files, which keeps the
registry's content hash meaningful.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# Words that get whole-word merges in the CLIP vocabulary. Anything else still tokenizes (every
# byte has a token), just into more pieces; the text encoder is random anyway.
CLIP_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "portrait", "studio",
    "product", "bottle", "shoe", "dress", "shirt", "watch", "bag", "cat", "dog", "person", "woman",
    "man", "face", "red", "blue", "green", "white", "black", "background", "light", "style",
    "painting", "sunset", "beach", "city", "street", "table", "wood", "marble", "high", "quality",
    "detailed", "sharp", "soft", "blur", "blurry", "low", "squirrel", "burger", "astronaut",
)
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"

# Sentences the LLM tokenizer is trained on: enough to learn a few hundred merges.
LLM_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant that writes short product descriptions.",
    "Describe the image in one sentence.",
    "A red bottle stands on a white marble table in soft studio light.",
    "The quick brown fox jumps over the lazy dog.",
    "Write a prompt for a photo of a woman wearing a blue dress on a beach at sunset.",
    "Improve this prompt: a cat sitting on a wooden chair, high quality, detailed.",
    "Summarize the feedback and suggest a better prompt for the next attempt.",
    "The image is too dark; increase the brightness and keep the product centered.",
    "Hello! How can I help you today? Please answer briefly and clearly.",
    "Generation, editing, refine, video, background, face, adjust, detail, remove, text.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, yes no ok. Thanks!",
)
LLM_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML, the template of the Qwen2.5 instruct models used in production. A default system prompt
# is NOT injected, so "no system_prompt" really means no system turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (the alphabet of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_vocab_and_merges(words: tuple[str, ...] = CLIP_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary: every byte (alone and word-final), merges for ``words``, specials.

    The layout follows CLIP's own files: 256 byte symbols, the same 256 with the ``</w>``
    end-of-word suffix, then one token per merge, then the two special tokens last.
    """
    alphabet = [_bytes_to_unicode()[b] for b in range(256)]
    tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(tokens)
    for word in words:
        encoded = "".join(_bytes_to_unicode()[b] for b in word.encode("utf-8"))
        symbols = list(encoded[:-1]) + [encoded[-1] + "</w>"]
        # Merge left to right; every intermediate result becomes a vocabulary entry, so whatever
        # order BPE applies the merges in, each piece it produces is a known token.
        while len(symbols) > 1:
            left, right = symbols[0], symbols[1]
            merged = left + right
            if merged not in seen:
                merges.append(f"{left} {right}")
                tokens.append(merged)
                seen.add(merged)
            symbols = [merged] + symbols[2:]
    tokens += [CLIP_BOS, CLIP_EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer_files(directory: Path) -> dict[str, int]:
    """Write ``vocab.json`` and ``merges.txt``; return vocab size and special-token ids."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[CLIP_BOS],
        "eos_token_id": vocab[CLIP_EOS],
    }


def build_chat_tokenizer(vocab_size: int = 512):
    """A ``Qwen2Tokenizer`` (a ``PreTrainedTokenizerFast``) whose BPE is trained on ``LLM_CORPUS``.

    Qwen2's class rather than a bare ``PreTrainedTokenizerFast``: transformers 5 picks the
    tokenizer class from the model type when loading with ``AutoTokenizer``, so a Qwen2 model
    folder is always read back as a ``Qwen2Tokenizer`` (which rebuilds its pipeline from vocab and
    merges). Training with that same normalizer and pre-tokenizer makes the saved tokenizer and
    the loaded one identical, and mirrors the production Qwen2.5 tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    # Byte-level: any input string encodes without an unknown token, and decode() inverts it.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(LLM_CORPUS, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=512,
    )
