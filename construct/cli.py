"""What every command line in the project shares: ``--help`` shows each option's default."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every option whose help
    does not already state its default (argparse's ArgumentDefaultsHelpFormatter, minus the
    duplicates)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "default" in help_.lower() or action.default is None or action.default is argparse.SUPPRESS \
                or action.nargs == 0 or not action.option_strings:
            return help_
        return help_ + " (default: %(default)s)"
