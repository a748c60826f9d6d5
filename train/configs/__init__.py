"""Training configs: Python files whose `get_config()` returns an `ml_collections.ConfigDict`.

Pick one with `--config=train/configs/FILE.py` and override any field on the command line, e.g.
`--config.num_train_steps=500 --config.model.d_model=128`.
"""
