"""Serving: export a trained HyTRec model to a torch-only TorchScript file (docs/export.md)."""

#: history events per tower pass in a served batch (``HyTRecServing``; 0 = the whole batch;
#: measured: docs/export.md). Kept here, free of torch, so that ``hytrec-export --help`` can show
#: it without importing torch.
DEFAULT_MAX_TOKENS_PER_PASS = 32_768
