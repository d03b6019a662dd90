"""Stand-in for torchaudio on CPU-only dev/CI machines.

llamafactory 0.9.5 imports torchaudio at module level (data/mm_plugin.py) but only calls it for
audio inputs. No torchaudio build exists for the CPU torch used in CI, so this package lets text
fine-tuning import; any audio call fails loudly. GPU hosts install the real torchaudio instead.
"""

__version__ = "0.0.0+tunebot.standin"

_MESSAGE = "audio inputs need the real torchaudio; this CPU dev/CI install has a stand-in (see tunebot's README)"


def load(*_args, **_kwargs):
    raise RuntimeError(_MESSAGE)


class _Functional:
    def __getattr__(self, name):
        raise RuntimeError(_MESSAGE)


functional = _Functional()
