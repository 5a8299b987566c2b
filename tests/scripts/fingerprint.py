"""The training scripts' shared proof of "same final weights": a digest of every parameter's bytes.

The scripts run as ``python tests/scripts/<script>.py``, so this folder is on ``sys.path``.
"""

import hashlib

from torch import nn


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's name and bytes, in order: equal only for identical weights."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
