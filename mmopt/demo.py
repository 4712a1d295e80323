"""The offline demo's default prompt (a ShapesWorld scene the offline models know)."""

DEMO_PROMPT = "a red circle to the left of a blue square"
