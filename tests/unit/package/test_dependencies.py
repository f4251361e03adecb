"""Every third-party package the plugin imports is declared in setup.py (installed or in an extra)."""

import ast
import os
import sys

from tests.support.process import ROOT

# import name -> distribution name
DISTRIBUTIONS = {'espeakng_loader': 'espeakng-loader', 'matplotlib': 'matplotlib', 'megatron': 'megatron-core',
                 'numpy': 'numpy', 'packaging': 'packaging', 'rapidfuzz': 'rapidfuzz', 'safetensors': 'safetensors',
                 'sentencepiece': 'sentencepiece', 'soundfile': 'soundfile', 'tokenizers': 'tokenizers',
                 'torch': 'torch', 'transformer_engine': 'transformer-engine', 'triton': 'triton', 'wandb': 'wandb',
                 'whisper_normalizer': 'whisper-normalizer', 'yaml': 'pyyaml'}


def _setup_arguments() -> dict:
    call = next(node for node in ast.walk(ast.parse(open(os.path.join(ROOT, 'setup.py')).read()))
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup')
    wanted = ('install_requires', 'extras_require', 'python_requires')
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg in wanted}


def _name(requirement: str) -> str:
    for stop in '<>=[ ;':
        requirement = requirement.split(stop)[0]
    return requirement.lower()


def _imported_packages() -> dict:
    """Top-level third-party import name -> a file importing it."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, 'megatron_salm_mtp')):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                    for module in modules:
                        top = module.split('.')[0]
                        if top not in sys.stdlib_module_names and top != 'megatron_salm_mtp':
                            found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def test_every_import_is_declared():
    args = _setup_arguments()
    declared = {_name(r) for r in args['install_requires']}
    declared |= {_name(r) for extra in args['extras_require'].values() for r in extra}
    for module, where in _imported_packages().items():
        assert module in DISTRIBUTIONS, f'{where} imports {module}: declare it in setup.py and map it here'
        assert DISTRIBUTIONS[module] in declared, f'{where} imports {module}, which setup.py does not declare'


def test_what_ci_tests_is_what_setup_claims():
    args = _setup_arguments()
    assert args['python_requires'] == '>=3.11,<3.13'
    assert 'torch>=2.13' in args['install_requires'] and 'megatron-core>=0.16.1,<0.20' in args['install_requires']
    assert 'safetensors' in args['install_requires']  # convert/ imports it at module level
    assert not any('apex' in r for extra in args['extras_require'].values() for r in extra)
