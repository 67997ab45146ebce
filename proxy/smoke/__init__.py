"""`python -m proxy smoke`: the migration checklist run against one gateway, a row per check."""
