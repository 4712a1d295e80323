"""The CLI's commands, one module each (see ``mmopt.cli.COMMANDS``)."""
