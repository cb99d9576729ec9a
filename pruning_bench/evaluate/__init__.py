"""`pruning-bench eval`: accuracy and feature fidelity of timm image encoders, pruned and not.

- `data`: CLIP_benchmark's local webdataset layout (`wds/<name>` + a dataset root), a folder of
  images, or the natural images shipped inside installed packages (`sample_images`);
- `models`: `reference` (the offline DINOv2 ViT-S/14) or any timm name, with a check that a
  "pretrained" model is not secretly random init;
- `features`: batched image-tower features, cached per model / data / split / count;
- `probe`, `fidelity`, `finetune`: the three tasks (`rounds`: `--rounds`); `results`: the result JSON,
  whose `pruning` and `efficiency` blocks are built by `record/` (measured by `measure/`), as for a
  clip_benchmark run;
- `runner`: one evaluation from parsed arguments.
"""
