"""Every command of the package has a console script in setup.py, and each script names a ``main``."""

import ast
import importlib
import pathlib
import re

from tests.support import process

ROOT = pathlib.Path(process.ROOT)
PACKAGE_DIR = ROOT / 'megatron_salm_mtp'


def console_scripts() -> dict:
    """{script name: 'module:function'} from setup.py's entry_points."""
    text = (ROOT / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+)=(megatron_salm_mtp[\w.]*:\w+)'", text))


def command_modules() -> set:
    """Modules that run as ``python -m`` (they end in ``if __name__ == '__main__':``)."""
    found = set()
    for path in PACKAGE_DIR.rglob('*.py'):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.If) and "__name__ == '__main__'" in ast.unparse(node.test).replace('"', "'")
               for node in tree.body):
            found.add('.'.join(path.relative_to(ROOT).with_suffix('').parts))
    return found


def test_every_command_has_a_console_script():
    scripts = console_scripts()
    assert scripts['salm-mtp-train'] == 'megatron_salm_mtp.train:main'
    targets = {target.split(':')[0] for target in scripts.values()}
    assert command_modules() == targets, (sorted(command_modules() - targets), sorted(targets - command_modules()))
    assert len(set(scripts.values())) == len(scripts)


def test_every_console_script_names_a_function():
    for name, target in console_scripts().items():
        module, function = target.split(':')
        assert callable(getattr(importlib.import_module(module), function, None)), name
