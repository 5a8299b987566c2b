"""An ``accelerate`` training loop on a tiny BERT classifier built from a config (no gfprobe code in it).

``Accelerator(gradient_accumulation_steps=2)`` with the ``accelerator.accumulate(model)`` idiom and
``accelerator.clip_grad_norm_`` on the micro-batches that synchronise. The optimizer is
``SpyOptimizer``, a from-scratch Adam that snapshots Σg² (float64) of every gradient inside
``step()`` before updating. accelerate's ``AcceleratedOptimizer`` calls the inner ``step()`` only
when gradients synchronise, so the snapshots are exactly the consumed gradients (accumulated,
then clipped). The pre-clip norms ``clip_grad_norm_`` returned are saved as well. The last
stdout line is a checksum of the final weights.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable

import accelerate
import torch
import transformers
from witness import SnapshotOptimizer, weights_digest

VOCAB, SEQ, CLASSES = 64, 12, 3


class SpyOptimizer(SnapshotOptimizer):
    """Adam, written out, that records what each step consumes before updating."""

    def __init__(self, named: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(named, {"lr": lr, "betas": betas, "eps": eps})

    def update(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** state["t"])
                v_hat = state["v"] / (1 - beta2 ** state["t"])
                p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save", default="")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--accumulate", type=int, default=2)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    accelerate.utils.set_seed(args.seed)
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=args.accumulate, cpu=True)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    config.num_labels = CLASSES
    model = transformers.BertForSequenceClassification(config)
    spy = SpyOptimizer(model.named_parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, spy)
    gen = torch.Generator().manual_seed(args.seed + 1)
    grad_norms: list[float] = []
    model.train()
    for _ in range(args.steps * args.accumulate):
        ids = torch.randint(0, VOCAB, (4, SEQ), generator=gen)
        labels = ids[:, 0] % CLASSES  # learnable: the class is a function of the first token
        with accelerator.accumulate(model):
            loss = model(input_ids=ids, labels=labels).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norms.append(float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)))
            optimizer.step()
            optimizer.zero_grad()
    if args.save:
        torch.save({"names": spy.names, "sumsq": torch.tensor(spy.snapshots, dtype=torch.float64),
                    "grad_norms": grad_norms, "max_grad_norm": args.max_grad_norm, "pid": os.getpid()}, args.save)
    print(f"optimizer steps={len(spy.snapshots)} clips={len(grad_norms)}", flush=True)
    print(f"weights-checksum {weights_digest(accelerator.unwrap_model(model))}", flush=True)


if __name__ == "__main__":
    main()
