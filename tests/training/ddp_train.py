"""Two-process DDP training on CPU (gloo), run as a script: Lightning's launcher re-executes it for rank 1."""
import json
import sys
from pathlib import Path

import torch

from i2a.training.gpt import GPTDataset
from test_train_gpt import S, _cfg, _data, train_gpt

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    train, valid = GPTDataset(*_data(24, 1), S=S), GPTDataset(*_data(8, 2), S=S)
    cfg = _cfg(gpus=2, max_epochs=2)
    result = train_gpt(train, valid, cfg, out / "run", accelerator="cpu")
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        sys.exit(0)
    (out / "result.json").write_text(json.dumps({**result, "expected_lr": cfg.train.base_lr * cfg.train.batch * 2}))
