"""TorchX components and job entry points."""
