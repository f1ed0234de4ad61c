"""``llamo chat --ckpt RUN [--prompt TEXT]``: the CLI-protocol names for `llamo.generate_cli`'s chat command."""

from llamo.generate_cli import add_chat_arguments as add_cli_arguments
from llamo.generate_cli import run_chat as cli_run

__all__ = ["add_cli_arguments", "cli_run"]
