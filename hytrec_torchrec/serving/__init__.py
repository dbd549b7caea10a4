"""Serving: export a trained HyTRec model to a torch-only TorchScript file (docs/export.md)."""
