"""Card content, as data: one TOML template per card kind, the shared template pieces (``partials.j2``) and the
sources the cards cite. Clinicians review these files; ``service.card_render`` fills them in (this package holds no
code, so the content imports nothing from the service)."""
