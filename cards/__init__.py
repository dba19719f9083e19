"""Card content: one TOML template per card kind, the sources they cite, and the renderer that turns a
rule's finding into a CDS Hooks 2.0 card. Clinicians review the ``*.toml`` files; the code only fills them in."""

from cards.render import card_kinds, render_card

__all__ = ["card_kinds", "render_card"]
