"""The paper's big model on WMT 2014 English -> German (Vaswani et al. 2017, Table 3 "big").

    python -m train --workdir=runs/wmt14_big --config=train/configs/wmt14_big.py

As train/configs/wmt14_base.py (data, vocabulary, batches of ~25,000 tokens, schedule, beam 4,
length penalty 0.6), with the big preset: d_model 1024, 16 heads, d_ff 4096, dropout 0.3 (the
paper's value for English -> German), 300,000 steps, and the test decoded with the average of
the last 20 checkpoints (section 6.1). The paper's 28.4 BLEU is tokenized BLEU; sacreBLEU runs
lower. The paper trained it for 3.5 days on 8 P100 GPUs.
"""

from __future__ import annotations

import ml_collections

from train.configs import wmt14_base


def get_config() -> ml_collections.ConfigDict:
    config = wmt14_base.get_config()
    config.model = wmt14_base.model_fields("big")

    config.num_train_steps = 300_000
    config.eval_every_steps = 10_000
    # The paper's 10-minute checkpoints are about 600 of its big steps; the last 20 are averaged.
    config.checkpoint_every_steps = 600
    config.keep_checkpoints = 20
    config.average_last = 20
    return config
