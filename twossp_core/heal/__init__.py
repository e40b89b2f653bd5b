"""Healing: recover a pruned model's quality by a short training run against the dense model.

`config` is torch-free (the request schema imports it); `loop` runs the training, `lora` wraps and merges
LoRA adapters through peft, `data` draws the training windows, `plot` draws the loss curve.
"""
