"""Paper-style tables (Markdown/CSV/LaTeX/JSON/HTML) and matplotlib plots from robcli tables."""
