"""New MTP heads on a checkpoint trained without MTP: the trunk loads exactly, the heads start
fresh and train (head_only); asking for its optimizer state, or for other MTP layers than a
checkpoint that has some, is refused with the flags named."""

from tests.support.train_utils import read_metrics, run_train


def test_attach_mtp_heads_to_a_checkpoint_without_mtp(espeak_corpus, tmp_path):
    corpus = espeak_corpus
    base, heads = tmp_path / 'base', tmp_path / 'heads'
    one_step_logs = ['--log-interval', '1', '--lr-warmup-iters', '1', '--mtp-num-layers']
    run_train(corpus, one_step_logs + ['0', '--train-iters', '3', '--save-interval', '2', '--save', str(base),
                                       '--log-dir', str(base)])
    (base / 'latest_checkpointed_iteration.txt').write_text('2\n')  # roll back past the end-of-run save

    refused = run_train(corpus, one_step_logs + ['2', '--train-iters', '4', '--load', str(base)], check=False)
    assert refused.returncode != 0 and 'add --no-load-optim to attach new MTP layers' in refused.stdout + refused.stderr

    attached = tmp_path / 'attached'
    result = run_train(corpus, one_step_logs + ['2', '--train-iters', '5', '--load', str(base), '--no-load-optim',
                                                '--training-mode', 'head_only', '--save', str(heads),
                                                '--log-dir', str(attached)])
    output = result.stdout + result.stderr
    assert 'has no MTP layers: the 2 MTP depths of this run start from their initialisation' in output
    first = read_metrics(str(attached))[0]
    # step 3 runs on the step-2 trunk in both runs, on the same batch (data position restored)
    assert first['iteration'] == 3 and first['lm loss'] == read_metrics(str(base))[2]['lm loss']
    mtp_losses = [r['mtp_1 loss'] for r in read_metrics(str(attached))]
    assert len(mtp_losses) == 3 and all(loss > 0 for loss in mtp_losses)

    other = run_train(corpus, one_step_logs + ['3', '--train-iters', '6', '--load', str(heads), '--no-load-optim'],
                      check=False)
    assert other.returncode != 0
    assert 'saved with 2 MTP depths, this run has 3 MTP depths (--mtp-num-layers' in other.stdout + other.stderr
