"""Stand-in for `deepspeed` (see ../README.md): serve_rm never calls it for a dense model."""


class _Never:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Never(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"stand-in deepspeed: {self._name} was called; install deepspeed")


utils = _Never("deepspeed.utils")
zero = _Never("deepspeed.zero")
comm = _Never("deepspeed.comm")
__version__ = "0.0.0+standin"
