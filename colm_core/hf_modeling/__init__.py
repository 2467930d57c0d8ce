"""Files shipped inside `colm export --format hf` directories (not imported by colm itself)."""
