"""Stand-in for `flash_attn` (see ../README.md): used only with --ds.packing_samples."""

__version__ = "0.0.0+standin"
