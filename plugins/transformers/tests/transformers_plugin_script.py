"""A Hugging Face ``Trainer`` run for the plugin's tests: a tiny BERT classifier on synthetic data.

With no options the script runs no gfprobe code at all. ``--explicit`` passes a
``GfprobeCallback()`` to the Trainer; ``--watch RUN`` does too, inside ``gfprobe.watch(model,
out=RUN)``; ``--out RUN`` passes a ``GfprobeCallback(out=RUN)``, which records by itself.
``--save FILE`` writes what the Trainer logged (``state.log_history``), the GfprobeCallbacks
each Trainer holds and a few facts to compare the run file with. The last stdout line is a
checksum of the final weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from typing import Any

import numpy as np
import torch
import transformers
from torch.utils.data import Dataset

VOCAB, SEQ, CLASSES = 32, 8, 2
MAX_STEPS = 6


class Parity(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences labelled by whether token 1 appears more often than token 2."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(prediction: Any) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def gfprobe_callbacks(trainer: transformers.Trainer) -> int:
    """How many GfprobeCallbacks the Trainer holds, found by class name (no gfprobe import)."""
    return sum(type(c).__name__ == "GfprobeCallback" for c in trainer.callback_handler.callbacks)


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save", default="")
    p.add_argument("--explicit", action="store_true", help="pass GfprobeCallback() to the Trainer")
    p.add_argument("--watch", default="", help="record with gfprobe.watch(model, out=WATCH) and GfprobeCallback()")
    p.add_argument("--out", default="", help="pass GfprobeCallback(out=OUT) to the Trainer")
    args = p.parse_args()

    callbacks: list[transformers.TrainerCallback] = []
    if args.explicit or args.watch or args.out:
        from gfprobe_transformers import GfprobeCallback

        callbacks.append(GfprobeCallback(out=args.out or None))

    transformers.set_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=SEQ,
                                     num_labels=CLASSES)  # type: ignore[call-arg]  # a PretrainedConfig keyword
    model = transformers.BertForSequenceClassification(config)
    with tempfile.TemporaryDirectory() as tmp:
        training = transformers.TrainingArguments(
            output_dir=tmp, max_steps=MAX_STEPS, learning_rate=3e-3, per_device_train_batch_size=8,
            per_device_eval_batch_size=16, gradient_accumulation_steps=2, max_grad_norm=1.0, logging_steps=2,
            eval_strategy="steps", eval_steps=3, report_to=[], save_strategy="no", use_cpu=True, seed=0,
            data_seed=0, disable_tqdm=True, dataloader_num_workers=0, hub_token="hf_secret_do_not_store",
        )
        trainer = transformers.Trainer(model=model, args=training, train_dataset=Parity(96, 1),
                                       eval_dataset=Parity(32, 2), compute_metrics=accuracy, callbacks=callbacks)
        # A second Trainer, never trained: a GfprobeCallback added after construction.
        late = transformers.Trainer(model=model, args=training, train_dataset=Parity(8, 3), eval_dataset=Parity(8, 4))
        if args.explicit:
            late.add_callback(GfprobeCallback)
        if args.watch:
            import gfprobe

            with gfprobe.watch(model, out=args.watch):
                trainer.train()
        else:
            trainer.train()
    status_after_train = ""
    if args.out:  # GfprobeCallback(out=...) finalises its run file when training ends
        from gfprobe.store.reader import open_run

        with open_run(args.out) as run:
            status_after_train = str(run.metadata["status"])
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump({"log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
                       "callbacks": gfprobe_callbacks(trainer), "late_callbacks": gfprobe_callbacks(late),
                       "num_parameters": model.num_parameters(), "learning_rate": training.learning_rate,
                       "per_device_train_batch_size": training.per_device_train_batch_size,
                       "status_after_train": status_after_train}, f)
    print(f"global_step={trainer.state.global_step}", flush=True)
    print(f"weights-checksum {weights_digest(model)}", flush=True)


if __name__ == "__main__":
    main()
