"""Services shared by the CLI and the demo (the demo never imports the CLI)."""
