"""What every command line in the project shares: ``--help`` shows each option's default."""

from __future__ import annotations

import argparse


def _shows_default(action: argparse.Action) -> bool:
    return (bool(action.option_strings) and action.nargs != 0 and action.default is not None
            and action.default is not argparse.SUPPRESS and action.help is not argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every option that takes a
    value, unless its help already states its default (argparse's ArgumentDefaultsHelpFormatter
    without the duplicates, and also for options that have no help text)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "default" in help_.lower() or not _shows_default(action):
            return help_
        return help_ + " (default: %(default)s)"
