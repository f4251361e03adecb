"""What the tools that read ``evaluate`` reports share: reading one, and printing a text table."""

import json


def read_report(path: str) -> dict:
    """The report at ``path``; a ValueError names the file when it is not one."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: cannot read an evaluate report ({error})') from error
    if 'hypotheses' not in report or 'modes' not in report:
        raise ValueError(f'{path}: not an evaluate report (no "hypotheses" / "modes")')
    return report


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, the header first."""
    table = [header] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table)
