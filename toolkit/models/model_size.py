"""How much memory an open_clip model config needs, estimated from its numbers before anything is allocated.

A model-config JSON is user input: a text width of 16384, an image size of 100000 or a million layers are all
allocatable in principle and would grow the process until the machine kills it. `check_fits` refuses such a config
in one line naming the field, by arithmetic on the config alone (no torch, no allocation).

The estimate counts fp32 weights (open_clip builds in fp32, then casts) and the inference activations of one batch
(per layer: a few (tokens, width) tensors, the MLP's hidden layer and the (heads, tokens, tokens) attention scores).
It is within a few percent for ViTs and text transformers, rougher for ResNets; timm and Hugging Face towers are
named by model, not sized by the config, so only the parts the config sizes are counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from toolkit.errors import ModelError

FP32 = 4  # bytes per parameter / activation value

# Typical values, for naming the field that makes a config too big: the one whose typical value shrinks it most.
TYPICAL: dict[tuple[str, ...], Any] = {
    ("embed_dim",): 512,
    ("vision_cfg", "width"): 768, ("vision_cfg", "layers"): 12, ("vision_cfg", "image_size"): 224,
    ("vision_cfg", "patch_size"): 32, ("vision_cfg", "mlp_ratio"): 4.0, ("vision_cfg", "head_width"): 64,
    ("text_cfg", "width"): 512, ("text_cfg", "layers"): 12, ("text_cfg", "heads"): 8,
    ("text_cfg", "vocab_size"): 49408, ("text_cfg", "context_length"): 77, ("text_cfg", "mlp_ratio"): 4.0,
}


def _num(cfg: dict, path: tuple[str, ...], default: Any, what: str) -> Any:
    """cfg[path] as a positive number (a list of positive ints for ResNet layers / 2-d image sizes)."""
    value = cfg
    for key in path:
        value = value.get(key, default) if isinstance(value, dict) else default
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in items):
        raise ModelError(f"model config {what}: {'.'.join(path)} {value!r} must be a positive number; fix the file")
    return value


def _vision(cfg: dict, batch: int, what: str) -> tuple[int, int]:
    """(parameters, activation values) of the vision tower; timm towers: (0, 0)."""
    v = cfg.get("vision_cfg") or {}
    if v.get("timm_model_name"):
        return 0, 0
    E = _num(cfg, ("embed_dim",), 512, what)
    W = _num(cfg, ("vision_cfg", "width"), 768, what)
    size = _num(cfg, ("vision_cfg", "image_size"), 224, what)
    h, w = (size, size) if not isinstance(size, (list, tuple)) else (size[0], size[-1])
    layers = _num(cfg, ("vision_cfg", "layers"), 12, what)
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: bottleneck stages of width W * 2**i, 4x expansion
        params, inplanes = 3 * (W // 2) * 9 + (W // 2) ** 2 * 9 + (W // 2) * W * 9, W
        for i, n in enumerate(layers):
            p = W * 2 ** i
            params += int(n) * 17 * p * p + inplanes * (4 * p)  # per block ~17 p^2; first block's downsample
            inplanes = 4 * p
        embed, spatial = W * 32, (h // 32) * (w // 32) + 1
        params += spatial * embed + 3 * embed * embed + embed * E
        return int(params), int(batch * 3 * W * (h // 2) * (w // 2))  # the stem's maps dominate
    P = _num(cfg, ("vision_cfg", "patch_size"), 16, what)
    r = _num(cfg, ("vision_cfg", "mlp_ratio"), 4.0, what)
    heads = max(1, W // _num(cfg, ("vision_cfg", "head_width"), 64, what))
    tokens = (h // P) * (w // P) + 1
    per_layer = (4 + 2 * r) * W * W + (9 + r) * W
    params = 3 * P * P * W + (tokens + 1) * W + layers * per_layer + 4 * W + W * E
    acts = batch * ((4 + r) * tokens * W + heads * tokens * tokens)
    return int(params), int(acts)


def _text(cfg: dict, batch: int, what: str) -> tuple[int, int]:
    """(parameters, activation values) of the text tower; Hugging Face towers: (0, 0)."""
    if (cfg.get("text_cfg") or {}).get("hf_model_name"):
        return 0, 0
    E = _num(cfg, ("embed_dim",), 512, what)
    W = _num(cfg, ("text_cfg", "width"), 512, what)
    L = _num(cfg, ("text_cfg", "layers"), 12, what)
    heads = _num(cfg, ("text_cfg", "heads"), 8, what)
    V = _num(cfg, ("text_cfg", "vocab_size"), 49408, what)
    C = _num(cfg, ("text_cfg", "context_length"), 77, what)
    r = _num(cfg, ("text_cfg", "mlp_ratio"), 4.0, what)
    params = V * W + C * W + L * ((4 + 2 * r) * W * W + (9 + r) * W) + 2 * W + W * E
    acts = batch * ((4 + r) * C * W + heads * C * C)
    return int(params), int(acts)


def estimate(model_cfg: dict, batch_size: int, what: str = "") -> tuple[int, int]:
    """(parameters, bytes needed: fp32 weights + one batch's activations) for an open_clip model config."""
    (pv, av), (pt, at) = _vision(model_cfg, batch_size, what), _text(model_cfg, batch_size, what)
    params = pv + pt
    return params, FP32 * (params + max(av, at))


def available_memory() -> Optional[int]:
    """Bytes the system can still give this process without swapping (MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _with(cfg: dict, path: tuple[str, ...], value: Any) -> dict:
    out = dict(cfg)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = {**(cfg.get(path[0]) or {}), path[1]: value}
    return out


def _culprit(cfg: dict, batch_size: int, what: str) -> tuple[str, Any]:
    """The field (dotted) whose typical value shrinks the estimate most, and its value."""
    best, best_need = None, estimate(cfg, batch_size, what)[1]
    for path, typical in TYPICAL.items():
        section = cfg if len(path) == 1 else (cfg.get(path[0]) or {})
        if path[-1] not in section or section[path[-1]] == typical:
            continue
        if path == ("vision_cfg", "layers") and isinstance(section["layers"], (list, tuple)):
            typical = [3, 4, 6, 3]
        need = estimate(_with(cfg, path, typical), batch_size, what)[1]
        if need < best_need:
            best, best_need = path, need
    if best is None:
        return "the model as a whole", None
    section = cfg if len(best) == 1 else cfg[best[0]]
    return ".".join(best), section[best[-1]]


def check_fits(model_cfg: Optional[dict], batch_size: int, what: str, available: Optional[int] = None) -> None:
    """Refuse (ModelError, one line naming the field) a model config whose weights and one batch's activations
    need more than `available` bytes (default: the system's MemAvailable). Pure arithmetic on the config."""
    if not isinstance(model_cfg, dict):
        return
    params, need = estimate(model_cfg, batch_size, what)
    available = available_memory() if available is None else available
    if available is None or need <= available:
        return
    field, value = _culprit(model_cfg, batch_size, what)
    shown = f"{field} {value!r}" if value is not None else field
    raise ModelError(f"model config {what}: {shown} makes the model need ~{need / 1e9:,.1f} GB "
                     f"({params / 1e9:,.2f} G parameters in fp32 plus a batch of {batch_size}), more than the "
                     f"{available / 1e9:,.1f} GB of memory available; fix that value (or lower --batch-size)")
