"""``llamo caption --ckpt RUN clip.npy``: the CLI-protocol names for `llamo.generate_cli`'s caption command."""

from llamo.generate_cli import add_caption_arguments as add_cli_arguments
from llamo.generate_cli import run_caption as cli_run

__all__ = ["add_cli_arguments", "cli_run"]
