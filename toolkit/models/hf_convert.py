"""Hugging Face transformers CLIP folders converted to an open_clip CLIP in memory: config, weights, tokenizer.

A transformers CLIP folder holds `config.json` (model_type "clip") and `model.safetensors` (or shards with an index,
or a `pytorch_model.bin` that loads weights-only). Its towers map one to one onto open_clip's CLIP, the layout of
OpenAI's original code: q/k/v projections are concatenated into `in_proj`, the two output projections transposed.
The text tower pools where transformers does: at the first `eos_token_id` (open_clip's "eos" pooling), or at the
highest token id for configs from before transformers PR #24773 (eos_token_id 2; open_clip's "argmax").

Owned by weights.py. Needs torch and safetensors; transformers only for a folder's own tokenizer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.errors import ModelError
from toolkit.models.weight_files import read_json

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
SIMPLE_EOT, SIMPLE_VOCAB = 49407, 49408  # open_clip's SimpleTokenizer: the same BPE as CLIPTokenizer
# transformers activation name -> (open_clip quick_gelu, nn.GELU kwargs)
ACTIVATIONS = {"quick_gelu": (True, None), "gelu": (False, None),
               "gelu_new": (False, {"approximate": "tanh"}), "gelu_pytorch_tanh": (False, {"approximate": "tanh"})}
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5, "eos_token_id": 49407}
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 32, "num_channels": 3, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5}
FIX = "see README 'Bring your own weights'"


def read_config(folder: Path) -> Optional[dict]:
    """The folder's config.json as a dict, or None when there is none."""
    path = folder / "config.json"
    return read_json(path, "transformers config") if path.is_file() else None


def _act(tower: dict, where: str) -> tuple[bool, Optional[dict]]:
    act = tower["hidden_act"]
    if act not in ACTIVATIONS:
        raise ModelError(f"transformers CLIP folder '{where}': {act!r} activation has no open_clip equivalent "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def open_clip_config(hf: dict, where: str) -> dict:
    """An open_clip model config (embed_dim, quick_gelu, vision_cfg, text_cfg) equivalent to a CLIPConfig dict."""
    t = {**TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    v = {**VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    (t_quick, t_kw), (v_quick, v_kw) = _act(t, where), _act(v, where)
    if t_quick != v_quick:
        raise ModelError(f"transformers CLIP folder '{where}': QuickGELU in one tower and GELU in the other "
                         f"({t['hidden_act']} / {v['hidden_act']}); open_clip builds both towers alike")
    if v["num_channels"] != 3:
        raise ModelError(f"transformers CLIP folder '{where}': vision_config.num_channels {v['num_channels']} "
                         "is not 3 (RGB); only RGB CLIP models convert")
    eos = t["eos_token_id"]
    text_cfg = {"context_length": t["max_position_embeddings"], "vocab_size": t["vocab_size"],
                "width": t["hidden_size"], "heads": t["num_attention_heads"], "layers": t["num_hidden_layers"],
                "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
                # before transformers PR #24773 configs said eos_token_id 2 and pooled at the highest token id
                "pool_type": "argmax" if eos == 2 else "eos", "eos_id": eos,
                "norm_kwargs": {"eps": t["layer_norm_eps"]}, "act_kwargs": t_kw}
    vision_cfg = {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": v["hidden_size"],
                  "layers": v["num_hidden_layers"], "head_width": v["hidden_size"] // v["num_attention_heads"],
                  "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
                  "norm_kwargs": {"eps": v["layer_norm_eps"]}, "act_kwargs": v_kw}
    return {"embed_dim": hf.get("projection_dim", 512), "quick_gelu": t_quick,
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def preprocess_cfg(folder: Path) -> dict:
    """open_clip preprocessing settings from preprocessor_config.json (mean, std, interpolation); {} without one."""
    path = folder / "preprocessor_config.json"
    try:
        pp = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, Any] = {}
    if isinstance(pp.get("image_mean"), list) and isinstance(pp.get("image_std"), list):
        out["mean"], out["std"] = tuple(pp["image_mean"]), tuple(pp["image_std"])
    if pp.get("resample") in (2, 3):  # PIL's BILINEAR / BICUBIC
        out["interpolation"] = "bilinear" if pp["resample"] == 2 else "bicubic"
    return out


def weights_file(folder: Path) -> Optional[Path]:
    """The folder's weights: model.safetensors, a shard index, or pytorch_model.bin (in that order); None if absent."""
    return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)


def shard_files(index: Path) -> list[Path]:
    """The shard files a *.index.json names, in order."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [index.parent / name for name in dict.fromkeys(weight_map.values())]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"'{index}' is not a valid shard index (no weight_map); re-download the folder") from None


def load_state_dict(path: Path) -> dict:
    """transformers CLIP weights: safetensors, weights-only .bin, or the shards of an index."""
    import torch

    files = shard_files(path) if path.name.endswith(".index.json") else [path]
    sd: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(str(f)))
            continue
        try:
            sd.update(torch.load(str(f), map_location="cpu", weights_only=True))
        except Exception as e:
            if "weights_only" in str(e) or "Weights only" in str(e):
                raise ModelError(f"'{f}' is a pickled checkpoint that needs code from the file to load; convert it "
                                 f"to model.safetensors on a trusted machine ({FIX})") from None
            raise
    return sd


_TOP = {  # transformers key -> (open_clip key, transpose)
    "logit_scale": ("logit_scale", False),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
    "text_model.final_layer_norm.weight": ("ln_final.weight", False),
    "text_model.final_layer_norm.bias": ("ln_final.bias", False),
    "text_projection.weight": ("text_projection", True),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", False),
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", False),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", False),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", False),
    "visual_projection.weight": ("visual.proj", True),
}
_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
          "self_attn.out_proj": "attn.out_proj"}
_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)")
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


def to_open_clip(sd: dict, where: str) -> dict:
    """transformers CLIPModel state dict -> open_clip CLIP state dict (same tensors; q/k/v fused, projections .T)."""
    import torch

    out, qkv, unknown = {}, {}, []
    for key, value in sd.items():
        if key.endswith("position_ids"):  # a buffer older transformers saved
            continue
        if key in _TOP:
            name, transpose = _TOP[key]
            out[name] = value.t().contiguous() if transpose else value
            continue
        m = _LAYER.fullmatch(key)
        if m is None:
            unknown.append(key)
            continue
        block = f"{'visual.' if m[1] == 'vision' else ''}transformer.resblocks.{m[2]}."
        q = _QKV.fullmatch(m[3])
        if q:
            qkv.setdefault((block, q[2]), {})[q[1]] = value
            continue
        hf = next((h for h in _BLOCK if m[3].startswith(h + ".")), None)
        if hf is None:
            unknown.append(key)
            continue
        out[block + _BLOCK[hf] + m[3][len(hf):]] = value
    if unknown:
        raise ModelError(f"transformers CLIP folder '{where}': unexpected weight {unknown[0]!r} (and {len(unknown) - 1} "
                         "more); only CLIPModel checkpoints convert")
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelError(f"transformers CLIP folder '{where}': {block} lacks one of q/k/v_proj.{kind}")
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


class EosPadded:
    """A tokenizer whose positions after the first EOS hold 0 instead of its pad token.

    transformers' CLIP tokenizers pad with the EOS token itself. With the causal mask nothing before the first EOS
    sees what follows it, so zeros there change no embedding, and clipkit's text encoder can cut the padding
    (accel.CausalTextTower treats 0 as padding).
    """

    def __init__(self, tokenizer: Callable, eos_id: int):
        self.tokenizer, self.eos_id = tokenizer, eos_id
        self.context_length = getattr(tokenizer, "context_length", None)

    def __call__(self, texts, context_length: Optional[int] = None):
        import torch

        ids = self.tokenizer(texts, context_length)
        is_eos = ids == self.eos_id
        after = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0  # strictly after the first EOS
        return ids.masked_fill(after, 0)


def tokenizer(folder: Path, hf: dict, context_length: int) -> Callable:
    """The folder's own tokenizer (open_clip's HFTokenizer, needs transformers) or open_clip's CLIP tokenizer."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    t = {**TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    eos = t["eos_token_id"]
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        if t["vocab_size"] < SIMPLE_VOCAB or eos not in (2, SIMPLE_EOT):
            raise ModelError(f"transformers CLIP folder '{folder}' has no tokenizer files and a vocabulary other than "
                             "CLIP's; copy its tokenizer.json (or vocab.json + merges.txt) into the folder")
        return SimpleTokenizer(context_length=context_length)
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ModelError(f"transformers CLIP folder '{folder}' brings its own tokenizer, which needs the transformers "
                         "package: pip install 'transformers>=4.40'")
    tok = HFTokenizer(str(folder), context_length=context_length)
    if eos == 2:  # legacy configs: transformers pools at the highest id, the EOS of CLIP's vocabulary
        eos = tok.tokenizer.eos_token_id
    return EosPadded(tok, eos)
