"""mmopt sub-package."""
