"""Video Studio: the user interface and its settings (no model code lives here)."""
