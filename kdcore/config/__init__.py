"""Recipes: the schema (what a recipe may say) and the loader (YAML, extends, --set, matrix)."""
