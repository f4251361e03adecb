"""What the tests share: the plain-torch reference, the multi-process harnesses, fixtures and helpers.

Modules here import each other as ``tests.support.X``; the scripts among them run from the repository
root with it on PYTHONPATH (``PYTHONPATH=. torchrun ... tests/support/harness.py``), which is what
``process.child_env()`` gives the processes the tests launch.
"""
