"""A local Hugging Face CLIP directory with RANDOM weights, built offline, for the peer benchmark.

    python -m loadtests.hf_clip_dir build/peers/clip-vit-b-32-random     # ViT-B/32 shapes

`CLIPModel(CLIPConfig())` (transformers' defaults are ViT-B/32's shapes: 224 px, patch 32,
12 + 12 layers, 512-d projection) with a fixed seed, saved with `save_pretrained`, plus:
- OpenAI CLIP's BPE tokenizer (`vocab.json`, `merges.txt` and the fast `tokenizer.json`), derived
  from the vocabulary open_clip ships (`bpe_simple_vocab_16e6.txt.gz`, the same BPE as OpenAI
  CLIP's tokenizer); open_clip names its two special tokens `<start_of_text>` / `<end_of_text>`,
  OpenAI's files `<|startoftext|>` / `<|endoftext|>` (ids 49406 / 49407, the config's bos / eos);
- OpenAI CLIP's preprocessor config (resize the short side to 224, centre crop, OpenAI mean/std);
- `RANDOM_WEIGHTS.txt`, saying so: the compute is the real architecture's, the embeddings mean
  nothing. There is no model hub here; nothing is downloaded.

Both servers of the peer benchmark load this directory: infinity-emb (transformers 4.57,
`AutoModel` / `AutoProcessor`) and clipfleet (`backend: transformers`, `model: <this dir>`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from clipfleet.models.hf_clip_backend import openai_bpe, openai_clip_tokenizer

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
MARKER = "RANDOM_WEIGHTS.txt"


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    # save_pretrained adds tokenizer.json and tokenizer_config.json, which transformers 4.x reads
    openai_clip_tokenizer().save_pretrained(folder)


def write_image_processor(folder: Path, size: int) -> None:
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
        do_convert_rgb=True,
    )
    processor.save_pretrained(folder)


def build(folder: Path, overrides: dict | None = None, seed: int = 0) -> Path:
    """Write the directory (replacing a model saved there before) and return it. `overrides`
    are CLIPConfig keyword arguments (tests pass a tiny text_config / vision_config)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(**(overrides or {}))
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    vocab, merges = openai_bpe()
    write_tokenizer(folder, vocab, merges)
    write_image_processor(folder, int(config.vision_config.image_size))
    (folder / MARKER).write_text(
        "RANDOM WEIGHTS: CLIPModel(CLIPConfig(...)) initialised with torch seed "
        f"{seed} by loadtests/hf_clip_dir.py, for benchmarks only. The architecture and the "
        "tokenizer are real (OpenAI CLIP's BPE); the embeddings mean nothing.\n",
        encoding="utf-8",
    )
    return folder


def is_built(folder: Path) -> bool:
    return all(
        (folder / name).is_file()
        for name in (MARKER, "config.json", "vocab.json", "preprocessor_config.json")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild an existing directory")
    args = parser.parse_args()
    if is_built(args.folder) and not args.force:
        print(f"{args.folder}: already built (random weights); --force rebuilds it")
        return
    build(args.folder, seed=args.seed)
    print(f"{args.folder}: CLIP ViT-B/32 shapes, RANDOM WEIGHTS (seed {args.seed})")


if __name__ == "__main__":
    main()
