"""The offline half of neuralinst: data preparation, the three models (torch) and their training loop.

- `training.prepare`    `neuralinst prepare`: audio files -> a data set folder (docs/DESIGN.md §2)
- `training.data`       reading a data set folder (`load_split`, `read_manifest`) and drawing batches
- `training.configs`    named model configs, overrides, `build_model`
- `training.train`      `neuralinst train`: the training loop (single process, or DDP under torchrun)
- `training.checkpoint` checkpoints without pickle; `load_model(path)` is what export/ calls
"""
