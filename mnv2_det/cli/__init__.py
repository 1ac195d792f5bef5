"""Front ends: the command lines of tools/*.py. Nothing in the package imports them
(docs/design.md, "Import rule")."""
