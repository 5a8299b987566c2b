"""A Hugging Face ``Trainer`` run on a tiny GPT-2 built from a config (no gfprobe code in it).

The optimizer handed to the Trainer is ``SpyOptimizer``, a from-scratch SGD with momentum that,
inside ``step()``, snapshots Σg² (float64) of every gradient it is about to consume. The Trainer
wraps it in accelerate's ``AcceleratedOptimizer``, which calls the inner ``step()`` only on real
optimizer steps, so the snapshots are exactly the gradients that moved the weights: after
gradient accumulation and after the Trainer's ``max_grad_norm`` clipping. The Trainer's own
logged ``grad_norm`` values are kept too. Both are saved with ``--save``; the last stdout line
is a checksum of the final weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable

import torch
import transformers
from torch.utils.data import Dataset
from witness import SnapshotOptimizer, weights_digest

VOCAB, SEQ = 64, 16


class SpyOptimizer(SnapshotOptimizer):
    """SGD with momentum, written out, that records what each step consumes before updating."""

    def __init__(self, named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, momentum: float) -> None:
        super().__init__(named, {"lr": lr, "momentum": momentum})

    def update(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].get("momentum")
                buf = p.grad.clone() if buf is None else buf.mul_(group["momentum"]).add_(p.grad)
                self.state[p]["momentum"] = buf
                p.add_(buf, alpha=-group["lr"])


class Tokens(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences with a learnable pattern (each token predicts the next + 1)."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=gen)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save", default="")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    transformers.set_seed(args.seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32,
                                    bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    spy = SpyOptimizer(model.named_parameters(), lr=0.5, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        training = transformers.TrainingArguments(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=4, gradient_accumulation_steps=2,
            max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
            seed=args.seed, data_seed=args.seed, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = transformers.Trainer(model=model, args=training, train_dataset=Tokens(64, args.seed),
                                       optimizers=(spy, None))
        trainer.train()
    # log_history's "step" is global_step after the increment: optimizer step index + 1.
    grad_norms = {int(e["step"]) - 1: float(e["grad_norm"]) for e in trainer.state.log_history if "grad_norm" in e}
    if args.save:
        torch.save({"names": spy.names, "sumsq": torch.tensor(spy.snapshots, dtype=torch.float64),
                    "grad_norms": grad_norms, "max_grad_norm": training.max_grad_norm,
                    "global_step": trainer.state.global_step, "pid": os.getpid()}, args.save)
    print(f"optimizer steps={len(spy.snapshots)} global_step={trainer.state.global_step}", flush=True)
    print(f"weights-checksum {weights_digest(model)}", flush=True)


if __name__ == "__main__":
    main()
