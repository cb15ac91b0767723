"""Stand-in for `flash_attn.bert_padding`: every function raises if called."""


def _never(name):
    def call(*args, **kwargs):
        raise RuntimeError(f"stand-in flash_attn: {name} was called (packing_samples?)")

    return call


index_first_axis = _never("index_first_axis")
pad_input = _never("pad_input")
rearrange = _never("rearrange")
unpad_input = _never("unpad_input")
