"""Runs the Trainer with one NaN weight; prints what the NaN test asserts (see test_train_entry)."""

import sys

import torch

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.training.loop import Trainer

if __name__ == '__main__':
    trainer = Trainer(parse_args(sys.argv[1:]))
    module = trainer.model[0].module
    weight = module.language_model.decoder.layers[0].mlp.linear_fc2.weight
    with torch.no_grad():
        weight[0, 0] = float('nan')
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    try:
        trainer.fit()
    except RuntimeError as err:
        print('STOPPED:', err)
    print('skipped', trainer.skipped)
    same = all(torch.equal(before[n], p.detach()) or n.endswith('linear_fc2.weight')
               for n, p in module.named_parameters())
    print('UNCHANGED' if same and trainer.skipped == 3 else 'CHANGED')
