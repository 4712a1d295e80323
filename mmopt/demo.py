"""The offline demo's default prompt (a ShapesWorld scene the offline models know)."""
from mmopt.commands.demo import DEMO_PROMPT  # noqa: F401
