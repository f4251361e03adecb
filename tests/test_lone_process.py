"""The lone-process start: MASTER_PORT defaults to a free port only when no launcher (torchrun's
WORLD_SIZE, srun's SLURM_PROCID) is there."""

import os
import socket

from megatron_salm_mtp.parallel.setup import free_port, use_free_master_port_if_unlaunched


def test_free_port_can_be_bound():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', free_port()))


def test_unlaunched_gets_a_free_port(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.delenv('SLURM_PROCID', raising=False)
    monkeypatch.delenv('MASTER_PORT', raising=False)
    use_free_master_port_if_unlaunched()
    assert 0 < int(os.environ['MASTER_PORT']) < 65536


def test_launcher_and_user_ports_are_kept(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.delenv('SLURM_PROCID', raising=False)
    monkeypatch.setenv('MASTER_PORT', '12345')
    use_free_master_port_if_unlaunched()
    assert os.environ['MASTER_PORT'] == '12345'
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.delenv('MASTER_PORT')
    use_free_master_port_if_unlaunched()
    assert 'MASTER_PORT' not in os.environ
    monkeypatch.delenv('WORLD_SIZE')
    monkeypatch.setenv('SLURM_PROCID', '1')  # an srun task: every task must use the same port
    use_free_master_port_if_unlaunched()
    assert 'MASTER_PORT' not in os.environ
