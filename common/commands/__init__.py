"""Typer command groups. Each module imports only typer and the standard library at the top; stage code
(and with it torch, timm, ffcv) is imported inside the command that needs it, so `cdeit --help` is fast."""
