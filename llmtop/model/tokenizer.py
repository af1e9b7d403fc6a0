"""Tokenizer wrapper over `tokenizers.Tokenizer`, built from GGUF metadata or an HF tokenizer.json."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from llmtop.errors import LlmtopError
from llmtop.model.chat import render_chat

# llama.cpp token types (tokenizer.ggml.token_type)
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4


class Tokenizer:
    """Text <-> ids for one model, plus its chat template."""

    def __init__(
        self,
        tk: HFTokenizer,
        *,
        eos_token_ids: tuple[int, ...] = (),
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self.tk = tk
        self.eos_token_ids = tuple(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.chat_template = chat_template
        # bos_token / eos_token / unk_token / pad_token strings, visible to chat templates
        self.special_tokens = dict(special_tokens or {})
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tk.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise LlmtopError("this model has no chat template; run without chat formatting")
        return render_chat(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
        )


# -- GGUF ---------------------------------------------------------------------------------------

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), keyed by tokenizer.ggml.pre. Byte-level BPE
# merges were learned on text split this way, so ids only match the original when we split alike.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Pre-tokenizers whose first pass isolates every digit, then applies the GPT-2 regex.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_REGEX_PRE = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    split = _REGEX_PRE.get(pre or "")
    if split is None:
        # "default", "gpt2" and unknown names: llama.cpp falls back to the GPT-2 regex too.
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def tokenizer_from_gguf(md: dict[str, Any]) -> Tokenizer | None:
    """Build the tokenizer that a GGUF file's `tokenizer.ggml.*` metadata describes."""
    kind = md.get("tokenizer.ggml.model")
    tokens: list[str] | None = md.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        return None
    if kind != "gpt2":
        raise LlmtopError(
            f"GGUF tokenizer type {kind!r} is not supported (only byte-level BPE 'gpt2' tokenizers are)"
        )
    merges_raw: list[str] = md.get("tokenizer.ggml.merges") or []
    if not merges_raw:
        raise LlmtopError("GGUF byte-level BPE tokenizer has no merges (tokenizer.ggml.merges)")

    alphabet = set(_byte_alphabet().values())
    spell = _byte_alphabet()
    # Tokens are stored byte-level spelled; a few files store special tokens raw, so respell those.
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        key = t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))
        vocab.setdefault(key, i)
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        a, sep, b = m.partition(" ")
        if not sep:
            raise LlmtopError(f"GGUF tokenizer merge {m!r} is malformed")
        merges.append((a, b))

    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = _pre_tokenizer(md.get("tokenizer.ggml.pre"))
    tk.decoder = decoders.ByteLevel()

    types: list[int] = md.get("tokenizer.ggml.token_type") or []
    # Only tokens the vocabulary holds under their literal spelling: a raw-spelled "control" token
    # would otherwise grow the vocabulary past the embedding table.
    typed = [(t, ty) for t, ty in zip(tokens, types, strict=False) if vocab.get(t) is not None]
    special = [AddedToken(t, special=True, normalized=False) for t, ty in typed if ty == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in typed if ty == TOKEN_USER_DEFINED]
    if special:
        tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)

    def tok_id(key: str) -> int | None:
        v = md.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    bos, eos = tok_id("bos_token_id"), tok_id("eos_token_id")
    ends = (eos, tok_id("eot_token_id"), tok_id("eom_token_id"))
    eos_ids = tuple(dict.fromkeys(i for i in ends if i is not None))
    pieces = []
    if md.get("tokenizer.ggml.add_bos_token") and bos is not None:
        pieces.append(("bos", bos))
    if md.get("tokenizer.ggml.add_eos_token") and eos is not None:
        pieces.append(("eos", eos))
    if pieces:
        tk.post_processor = _template_processor(tokens, pieces)

    names = {"bos_token": bos, "eos_token": eos, "unk_token": tok_id("unknown_token_id"),
             "pad_token": tok_id("padding_token_id")}
    return Tokenizer(
        tk,
        eos_token_ids=eos_ids,
        bos_token_id=bos,
        chat_template=md.get("tokenizer.chat_template"),
        special_tokens={k: tokens[v] for k, v in names.items() if v is not None},
    )


def _template_processor(tokens: list[str], pieces: list[tuple[str, int]]) -> processors.PostProcessor:
    pre = [tokens[i] for kind, i in pieces if kind == "bos"]
    post = [tokens[i] for kind, i in pieces if kind == "eos"]
    single = " ".join([*(f"{t}:0" for t in pre), "$A:0", *(f"{t}:0" for t in post)])
    pair = " ".join([single, "$B:1", *(f"{t}:1" for t in post)])
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(tokens[i], i) for _, i in pieces]
    )


# -- HF checkpoint directory --------------------------------------------------------------------


def _token_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, tokenizer_config.json, ...), or LlmtopError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmtopError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise LlmtopError(f"{path} is not a JSON object")
    return data


def chat_template_from_hf_dir(d: Path) -> str | None:
    """tokenizer_config.json's chat_template, or chat_template.jinja (newer transformers)."""
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg_path = d / "tokenizer_config.json"
    if not cfg_path.is_file():
        return None
    tpl = read_json_object(cfg_path).get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl if isinstance(tpl, str) else None


def tokenizer_from_hf_dir(
    d: Path, *, eos_token_ids: tuple[int, ...], bos_token_id: int | None
) -> Tokenizer | None:
    """tokenizer.json (+ tokenizer_config.json) of a checkpoint directory; None if it has none."""
    path = d / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tk = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses on bad JSON
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlmtopError(f"cannot load {path}: {first}") from None
    tcfg = read_json_object(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    special = {k: s for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if (s := _token_str(tcfg.get(k))) is not None}
    eos = list(eos_token_ids)
    if (eos_str := special.get("eos_token")) is not None and (i := tk.token_to_id(eos_str)) is not None:
        eos.append(i)
    if bos_token_id is None and (bos_str := special.get("bos_token")) is not None:
        bos_token_id = tk.token_to_id(bos_str)
    return Tokenizer(
        tk,
        eos_token_ids=tuple(dict.fromkeys(eos)),
        bos_token_id=bos_token_id,
        chat_template=chat_template_from_hf_dir(d),
        special_tokens=special,
    )
