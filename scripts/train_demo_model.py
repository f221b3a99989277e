"""Train the tiny offline demo CLIP (data/models/clipkit-demo.*) on generated exercise images.

    .venv/bin/python scripts/train_demo_model.py            # the shipped recipe, ~10 min on 2 CPU cores

The model is a plain open_clip config (ModifiedResNet image tower, small text transformer,
default BPE tokenizer) registered with ``open_clip.add_model_config``, trained contrastively
with open_clip's ``ClipLoss`` and a learnable logit scale on image-caption pairs from
``toolkit.demo``. Images come from a pre-rendered pool (training stream ``[seed, TRAIN_STREAM, i]``,
disjoint from the ``[seed, class_index, i]`` streams used by ``clipkit demo-data`` and
``scripts/eval_demo.py``); captions are re-drawn every time an image is used.

Writes the fp16 safetensors checkpoint to ``--out`` and the recipe, wall time and final
zero-shot check to ``--out`` with suffix ``.train.json``. Like every script here, this one may
import open_clip directly.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.demo import EXERCISES, MAIN_CLASSES  # noqa: E402
from toolkit.demo.captions import caption  # noqa: E402
from toolkit.demo.figures import example_rng, render_example  # noqa: E402

TRAIN_STREAM = 1_000_003  # second entropy word of every training image's seed
CHECK_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "a photo of a person: {}.")


def build_pool(keys, n_per_class, seed, render_size, preprocess):
    """Pre-render images: uint8 tensor (n, 3, S, S) in model resolution, plus (key, attrs) rows."""
    images, meta = [], []
    for i in range(n_per_class):
        for key in keys:
            rng = np.random.default_rng([seed, TRAIN_STREAM, i * len(EXERCISES) + list(EXERCISES).index(key)])
            img, attrs = render_example(key, rng, render_size)
            images.append(_to_uint8(preprocess, img))
            meta.append((key, attrs))
    return torch.stack(images), meta


def _to_uint8(preprocess, img):
    """Resize + crop exactly like the model's eval transform, but keep uint8 to save memory."""
    resize_crop = [t for t in preprocess.transforms if type(t).__name__ in ("Resize", "CenterCrop")]
    for t in resize_crop:
        img = t(img)
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


def normalizer(preprocess):
    norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


@torch.no_grad()
def zero_shot_check(model, tokenizer, preprocess, keys, n_per_class, seed, size=224):
    """Accuracy on fresh images from the eval stream, prompts = label text in CHECK_TEMPLATES."""
    model.eval()
    class_emb = []
    for key in keys:
        tokens = tokenizer([t.format(EXERCISES[key]) for t in CHECK_TEMPLATES])
        emb = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).mean(0)
        class_emb.append(torch.nn.functional.normalize(emb, dim=0))
    class_emb = torch.stack(class_emb)
    correct = 0
    for ci, key in enumerate(keys):
        imgs = [render_example(key, example_rng(seed, list(EXERCISES).index(key), i), size)[0]
                for i in range(n_per_class)]  # fmt: skip
        feats = model.encode_image(torch.stack([preprocess(im) for im in imgs]))
        pred = (torch.nn.functional.normalize(feats, dim=-1) @ class_emb.T).argmax(1)
        correct += int((pred == ci).sum())
    model.train()
    return correct / (n_per_class * len(keys))


def _rel(value):
    """Paths under the repository as repo-relative strings, so the recorded recipe is portable."""
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(ROOT):
        return str(Path(value).relative_to(ROOT))
    return value


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


@click.command()
@click.option("--config", "config_path", default=str(ROOT / "data/models/clipkit-demo.json"),
              show_default=True, help="open_clip model config JSON; the model name is its stem.")
@click.option("--out", default=str(ROOT / "data/models/clipkit-demo.safetensors"), show_default=True)
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--warmup", default=100, show_default=True)
@click.option("--pool-per-class", default=2500, show_default=True, help="pre-rendered images per class")
@click.option("--render-size", default=128, show_default=True, help="pixels before the model's resize")
@click.option("--classes", default=",".join(EXERCISES), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--check-every", default=250, show_default=True)
def main(config_path, out, steps, batch_size, lr, weight_decay, warmup, pool_per_class,
         render_size, classes, seed, threads, check_every):
    """Train the demo CLIP from scratch on CPU and save an fp16 safetensors checkpoint."""
    recipe = {k: _rel(v) for k, v in locals().items()}
    t0 = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    keys = [k.strip() for k in classes.split(",")]
    open_clip.add_model_config(config_path)
    name = Path(config_path).stem
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {name}: {n_params / 1e6:.2f}M params", flush=True)

    pool, meta = build_pool(keys, pool_per_class, seed, render_size, preprocess)
    norm = normalizer(preprocess)
    print(f"pool {tuple(pool.shape)} rendered in {time.time() - t0:.0f}s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)  # fmt: skip
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    cap_rng = np.random.default_rng([seed, TRAIN_STREAM, -1 % 2**32])
    model.train()
    t_train = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(meta), (batch_size,), generator=gen)
        images = norm(pool[idx])
        texts = tokenizer([caption(*meta[i], cap_rng) for i in idx.tolist()])
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - t_train)
            print(f"step {step:5d} loss {loss.item():.3f} scale {scale.item():.1f} "
                  f"lr {lr_at(step, steps, lr, warmup):.2e} {rate:.2f} it/s", flush=True)
        if check_every and (step + 1) % check_every == 0 and step + 1 < steps:
            acc = zero_shot_check(model, tokenizer, preprocess, list(MAIN_CLASSES), 25, 12345)
            print(f"step {step + 1}: zero-shot check (4 main classes, 100 imgs) {acc:.3f}", flush=True)

    acc = zero_shot_check(model, tokenizer, preprocess, list(MAIN_CLASSES), 50, 12345)
    wall = time.time() - t0
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"model": name, "format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(out)
    report = {"recipe": recipe, "params": n_params, "wall_s": round(wall, 1),
              "final_check_acc_4class_200imgs_seed12345": acc,
              "torch": torch.__version__, "open_clip": open_clip.__version__}  # fmt: skip
    Path(out).with_suffix(".train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"final zero-shot check {acc:.3f}; wall {wall:.0f}s; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
