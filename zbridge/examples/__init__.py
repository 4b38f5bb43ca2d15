"""Example tools and a demo: ``python -m zbridge.examples``."""
