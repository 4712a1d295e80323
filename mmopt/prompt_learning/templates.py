"""Sentence templates with word slots: what PEZ's ``invert_templates`` fills and ``SlotEdits`` edits.

A template set is data (``assets/pez/<name>.json`` or a user's JSON file):
``{"slots": {name: [words]}, "templates": ["a {colour} {shape}", ...],
"opposites": {"above": "below", ...}}``. This module reads and checks it and
does the text work on it; it imports no torch.
"""
from __future__ import annotations

import os

__all__ = ["load_templates", "check_templates", "check_opposites", "reverse_relations"]


def _template_pieces(template: str) -> list[tuple[str, str]]:
    """``"a {colour} {shape} above"`` -> [("text", "a"), ("slot", "colour"), ("slot", "shape"), ("text", "above")]."""
    import re

    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"a template must be a non-empty string such as 'a {{colour}} {{shape}}', got {template!r}")
    pieces = []
    for text, name in re.findall(r"([^{}]*)(?:\{(\w+)\})?", template):
        if text.strip():
            pieces.append(("text", text.strip()))
        if name:
            pieces.append(("slot", name))
    if not any(kind == "slot" for kind, _ in pieces):
        raise ValueError(f"the template {template!r} has no {{slot}} to optimise")
    return pieces


def reverse_relations(sentence: str, opposites: dict[str, str]) -> str:
    """Every word of ``sentence`` found in ``opposites`` replaced by its reverse, at once:
    ``reverse_relations("a red circle above a blue square", {"above": "below"})`` ->
    ``"a red circle below a blue square"``."""
    return " ".join(opposites.get(w, w) for w in sentence.split())


def load_templates(name_or_path: str | os.PathLike = "shapesworld") -> dict:
    """Sentence templates and slot words for :meth:`PEZ.invert_templates`: a shipped set by name
    (``assets/pez/<name>.json``: ``"shapesworld"``) or a JSON file ``{"slots": {name: [words]},
    "templates": ["a {colour} {shape}", ...], "opposites": {"above": "below", ...}}``
    (``opposites`` optional: relation words and their reverses)."""
    import json
    from importlib import resources
    from pathlib import Path

    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        text, what = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("mmopt.assets") / "pez" / f"{name_or_path}.json"
        if not res.is_file():
            raise ValueError(f"unknown PEZ template set {str(name_or_path)!r}; give 'shapesworld' or a .json file")
        text, what = res.read_text(encoding="utf-8"), str(name_or_path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"PEZ templates {what!r} are not valid JSON: {e}") from None
    return check_templates(data, what)


def check_templates(data: object, what: str = "given") -> dict:
    """``data`` if it is a template set (slots, templates naming only those slots, optional
    opposites); a one-line ValueError naming ``what`` otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("slots"), dict) or not data.get("templates"):
        raise ValueError(f"PEZ templates {what!r} must be an object with 'slots' (name -> words) and 'templates'")
    for t in data["templates"]:
        for kind, name in _template_pieces(t):
            if kind == "slot" and not data["slots"].get(name):
                raise ValueError(f"PEZ templates {what!r}: the template {t!r} names {{{name}}}, which 'slots' lacks")
    check_opposites(data.get("opposites", {}), f"PEZ templates {what!r}: 'opposites'")
    return data


def check_opposites(opposites: object, what: str = "opposites") -> None:
    """A one-line ValueError unless ``opposites`` maps words to their reverse words."""
    if not isinstance(opposites, dict) or not all(isinstance(v, str) for v in opposites.values()):
        raise ValueError(f"{what} must map words to their reverses, e.g. {{\"above\": \"below\"}}; "
                         f"got {opposites!r}")
