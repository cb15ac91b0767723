"""Stand-in for `flash_attn.utils.distributed`: `all_gather` raises if called."""


def all_gather(*args, **kwargs):
    raise RuntimeError("stand-in flash_attn: all_gather was called (packing_samples?)")
