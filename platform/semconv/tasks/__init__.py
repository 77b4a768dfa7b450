"""Alignment Tasks: SFT prompt builders; the stage function is ``stage.run_tasks``."""
