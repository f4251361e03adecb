"""The package's import graph, read from the source with ``ast`` (nothing is imported).

Imports flow downward: entry points -> tools -> megatron_lm -> training / inference / convert ->
checkpoint / parallel -> model -> config -> data / compat. No function imports a package module,
which is how a loop between two packages hides; entry points are the exception (dist_checkpointing's
helper process re-imports the entry module, so they import the heavy parts inside ``main``), but
their imports flow downward too. Lazy imports of third-party packages (optional ones such as
Transformer Engine, matplotlib, wandb) are not this test's business.
"""

import ast
import pathlib

from tests.support.process import ROOT

PACKAGE = 'megatron_salm_mtp'
PACKAGE_DIR = pathlib.Path(ROOT) / PACKAGE

# Lowest first; a module belongs to the longest prefix that names it (the package itself: layer 0).
LAYERS = [
    ('compat', 'config_checks', 'data'),
    ('config', 'run_config', 'flags', 'cli', 'commands'),
    ('model',),
    ('checkpoint', 'parallel'),
    ('training', 'inference', 'convert'),
    ('megatron_lm',),
    ('tools',),
]
# Modules that import an optional third-party package at their top (so importing them is as lazy
# as importing that package): the Triton kernels need triton, which only CUDA builds of torch bring.
OPTIONAL_BACKENDS = ('model.linear_ce_triton',)
# Commands (``python -m``): the top layer, and allowed to import inside ``main``.
ENTRY_POINTS = ('train', 'generate', 'evaluate', 'transcribe', 'summarize', 'convert.__main__',
                'megatron_lm.pretrain')


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def layer(module: str) -> int:
    local = module[len(PACKAGE) + 1:]
    if local in ENTRY_POINTS:
        return len(LAYERS)
    best, best_len = (0, 0) if local == '' else (None, 0)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (local == prefix or local.startswith(prefix + '.')) and len(prefix) >= best_len:
                best, best_len = rank, len(prefix)
    if best is None:
        raise AssertionError(f'{module}: in no layer; add it to LAYERS (or ENTRY_POINTS) in {__file__}')
    return best


def _target(node, module: str, is_package: bool, known: set) -> list:
    """The package modules ``node`` imports (``from a import b`` names module ``a.b`` where it is one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split('.') if is_package else module.split('.')[:-1]
        if node.level:
            base = base[:len(base) - node.level + 1]
            stem = '.'.join(base + ([node.module] if node.module else []))
        else:
            stem = node.module
        names = [f'{stem}.{a.name}' if f'{stem}.{a.name}' in known else stem for a in node.names]
    return sorted({n for n in names if n == PACKAGE or n.startswith(PACKAGE + '.')})


def imports(source: str, module: str, is_package: bool = False, known=frozenset()) -> list:
    """(imported package module, line, inside a function) for every import statement of ``source``."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((t, child.lineno, in_function) for t in _target(child, module, is_package, known))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def package_imports():
    paths = sorted(PACKAGE_DIR.rglob('*.py'))
    known = {module_name(p) for p in paths}
    for path in paths:
        module = module_name(path)
        yield module, imports(path.read_text(), module, path.name == '__init__.py', known)


def problems(module: str, found: list) -> list:
    out = []
    for target, line, in_function in found:
        if layer(target) > layer(module):
            out.append(f'{module}:{line} imports {target}, a higher layer')
        optional = target[len(PACKAGE) + 1:] in OPTIONAL_BACKENDS
        if in_function and layer(module) != len(LAYERS) and not optional:
            out.append(f'{module}:{line} imports {target} inside a function (import it at the top)')
    return out


def test_imports_flow_downward_and_none_hides_in_a_function():
    found = [p for module, imported in package_imports() for p in problems(module, imported)]
    assert not found, '\n'.join(found)


def _top_package(module: str) -> str:
    return module.split('.')[1] if module.count('.') else module


def test_no_loop_between_packages():
    """Two packages of one layer import each other at most one way (a loop across packages at
    import time is what the layers exist to prevent)."""
    edges = {(_top_package(m), _top_package(t)) for m, found in package_imports()
             for t, _, _ in found if _top_package(m) != _top_package(t)}
    assert not [(a, b) for a, b in edges if (b, a) in edges and a < b], sorted(edges)


def test_the_check_sees_upward_and_hidden_imports():
    """The checker itself: an upward import, a function-local one, and a relative one resolved."""
    source = ('from ..training.loop import Trainer\n'
              'def f():\n    from .salm import SALM\n    import transformer_engine\n')
    found = imports(source, f'{PACKAGE}.model.specs')
    assert found == [(f'{PACKAGE}.training.loop', 1, False), (f'{PACKAGE}.model.salm', 3, True)]
    assert problems(f'{PACKAGE}.model.specs', found) == [
        f'{PACKAGE}.model.specs:1 imports {PACKAGE}.training.loop, a higher layer',
        f'{PACKAGE}.model.specs:3 imports {PACKAGE}.model.salm inside a function (import it at the top)']
    assert problems(f'{PACKAGE}.generate', [(f'{PACKAGE}.checkpoint.save_load', 9, True)]) == []
